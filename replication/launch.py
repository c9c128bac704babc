"""A profile on a Slurm cluster: `python -m replication launch slurm CONFIG... --partition P` (issue 27).

Make's rules (replication/pipeline.py) stay the one description of the work; this module hands the
GPU part of them to Slurm through submitit, and does the rest where it is started (a login node):

1. Checks and shared inputs, here, first: the configs' finished runs are checked as `make` does
   (rundir.check), each dataset is loaded once (a TFDS download; the JPEG stand-in's decoded cache)
   and each trial's x0 is made (train.load_x0). Tasks on many nodes writing these at once on a
   shared filesystem would race: the locks that guard them are flocks, which NFS and Lustre do not
   always honour across nodes.
2. Tasks, from the rules behind $(RUN) (the GPU ones): one per run, holding its training and every
   measurement that needs only its weights; a step that needs several runs (the landscape between
   SB and LB, both paths in one task) or a run that starts from another (Figure 5's piggyback runs
   start from SB's iterates) is a task of its own. A target is stale when its file is missing:
   every GPU rule has order-only prerequisites alone, so that is exactly what Make remakes
   (`make -q` cannot tell: it counts each run stale through the phony check it follows).
3. Waves: the stale tasks whose inputs exist go into one job array (one task per array element,
   one GPU each), and the launcher waits; then the tasks that became ready (landscapes, piggyback
   runs) go into the next. A task is submitted at most once per launch; one that failed is
   reported with its log, and what needs it is named as blocked.
4. Reports, here (no GPU), for each results folder whose results are all there.

A second launch finds nothing stale and submits nothing. A run cut short (time limit, preemption)
resumes from its last finished epoch when the next launch submits it again (train.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from replication import config as config_lib
from replication import storage
from replication.errors import UserError

RUN_TARGET = "metrics.json"  # a run's "done" file (train._finish): the rule that trains it


class LaunchError(UserError, ValueError):
    """Bad launch arguments or no Slurm to launch on; the message names the fix."""


@dataclasses.dataclass
class Rule:
    target: str
    prerequisites: list[str]
    order_only: list[str]
    commands: list[str]


@dataclasses.dataclass
class Task:
    """Targets that one array task makes, in order, and the files it needs made by others first."""

    name: str
    targets: list[str]
    needs: list[str]
    commands: dict[str, str]  # target -> its command as the rules write it

    def stale(self) -> list[str]:
        return [target for target in self.targets if not Path(target).exists()]

    def ready(self) -> bool:
        return all(Path(need).exists() for need in self.needs)


def parse_rules(text: str) -> tuple[dict[str, Rule], set[str]]:
    """The rules pipeline.rules prints (its own simple format), in order, and the phony targets."""
    rules, phony, current = {}, set(), None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.commands.append(line[1:])
        elif line.startswith(".PHONY:"):
            phony.update(line.split(":", 1)[1].split())
        elif ":" in line:
            target, _, rest = line.partition(": ")
            if not rest and line.endswith(":"):
                target = line[:-1]
            normal, _, order_only = rest.partition("|")
            current = rules[target] = Rule(target, normal.split(), order_only.split(), [])
        else:
            current = None
    return rules, phony


def tasks(rules: dict[str, Rule], phony: set[str]) -> list[Task]:
    """Group the GPU rules (behind $(RUN)) into array tasks: a run with the measurements that need
    it alone; anything else by the runs it needs."""
    by_target, groups = {}, {}
    for rule in rules.values():
        if not rule.commands or not rule.commands[0].startswith("$(RUN)"):
            continue
        needs = tuple(p for p in rule.prerequisites + rule.order_only if p not in phony)
        if Path(rule.target).name == RUN_TARGET:
            task = Task(str(Path(rule.target).parent), [], list(needs), {})
        elif len(needs) == 1 and needs[0] in by_target:
            task = by_target[needs[0]]
        else:
            task = groups.setdefault(needs, Task(rule.target, [], list(needs), {}))
        task.targets.append(rule.target)
        task.commands[rule.target] = rule.commands[0]
        by_target[rule.target] = task
    unique = {id(task): task for task in by_target.values()}  # first-seen order, each task once
    return list(unique.values())


def command_line(command: str, python: str) -> list[str]:
    """A GPU rule's command as an argument list: no $(RUN) (Slurm gave the task its GPU), $(PY) ->
    the interpreter that launched (a shared filesystem's, the same on every node)."""
    return shlex.split(command.replace("$(RUN)", "").replace("$(PY)", shlex.quote(python)))


def run_task(commands: list[list[str]], root: str) -> dict:
    """What one array task does, on its node: each command in turn, in the project folder, stopping
    at the first that fails. Returns what the launcher reports (a failure too: a raised error would
    hide which command failed behind submitit's traceback)."""
    record = {"host": socket.gethostname(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "started": time.time(), "failed": None}
    print(f"[task] on {record['host']}, CUDA_VISIBLE_DEVICES={record['cuda_visible_devices']}", flush=True)
    # What the Makefile exports for its recipes; PYTHONPATH so `-m replication` is this checkout.
    package = str(storage.PROJECT_ROOT)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
                   "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")]))}
    for command in commands:
        print(f"[task] {shlex.join(command)}", flush=True)
        status = subprocess.run(command, cwd=root, env=environment).returncode
        if status != 0:
            record.update(failed=shlex.join(command), status=status)
            break
    record["ended"] = time.time()
    return record


class RunTask:
    """run_task as submitit calls it on a node. Its `checkpoint` makes submitit requeue the task when
    Slurm warns of its time limit (SIGUSR2, 90 s ahead: submitit's --signal) or of a preemption
    (where the site sends that signal: PreemptParameters=send_user_signal), instead of ending it:
    up to 3 times (submitit's max_num_timeout), a 4th time-out ends it. The requeued task runs the same
    commands, each run resumes from its last finished epoch (train.py) and a finished measurement is
    skipped (its file is there), while one cut short starts again. Not a submitit class, so this
    module imports without submitit; submitit only asks whether `checkpoint` exists."""

    def __call__(self, commands: list[list[str]], root: str) -> dict:
        return run_task(commands, root)

    def checkpoint(self, commands: list[list[str]], root: str):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, commands, root)


def prepare(configs: list[config_lib.Config], stale_runs: set[str], stale_targets: list[str] = (),
            log=sys.stdout) -> None:
    """Shared inputs of the stale work, made once here before any task starts: the dataset of each
    config with a stale target (a TFDS download, the JPEG stand-in's decoded cache) and each stale
    run's trial's x0. x0 is made as train._prepare makes it (seeds, then the SB network's fresh
    weights; test_launch checks they agree)."""
    from replication import backend, data, rundir, train

    wanted = [(config, seed) for config in configs for seed in config.seeds
              if any(str(rundir.run_directory(config, regime, seed)) in stale_runs for regime in config.regimes())]
    # The data of every config with stale work, a measurement of a finished run's weights included.
    targets = [Path(target).resolve() for target in stale_targets]
    needs_data = [config for config, _ in wanted] + [
        config for config in configs if any(t.is_relative_to(Path(config.results_dir).resolve()) for t in targets)]
    for dataset, data_dir in dict.fromkeys((config.dataset, config.data_dir) for config in needs_data):
        print(f"[launch] loading {dataset} once before the tasks start", file=log, flush=True)
        data.load(dataset, data_dir)
    for config, seed in wanted:
        if rundir.x0_path(config, seed).exists():
            continue  # checked against its record by the runs themselves (train.load_x0)
        backend.setup_determinism(seed, deterministic_ops=not config.jit_compile)
        spec = data.DATASETS[config.dataset]
        model = rundir.build_model(config, spec.input_shape, spec.num_classes)
        train.load_x0(model, config, seed, log)
        print(f"[launch] made x0 {rundir.x0_path(config, seed)}", file=log, flush=True)


def parse_time(text: str) -> int:
    """A Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes,
    rounded up; 0 means none."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise LaunchError(f"--time {text!r} is not a Slurm time limit: give minutes (e.g. 90) or "
                          "D-HH:MM:SS (e.g. 0-01:30:00)")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = (first * 60 + second) * 60 + third
    elif second is not None:  # MM:SS
        seconds = first * 60 + second
    else:
        seconds = first * 60
    return -(-seconds // 60)


def partition_time_limit(partition: str) -> int:
    """The longest time limit `partition` allows, in minutes (0: none), from sinfo."""
    result = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%l"], capture_output=True, text=True)
    limits = result.stdout.split()
    if result.returncode != 0 or not limits:
        why = result.stderr.strip() or "sinfo lists nothing"
        raise LaunchError(f"partition {partition!r} is not known to Slurm ({why}): name one that "
                          "`sinfo -s` lists")
    return 0 if limits[0] in ("infinite", "UNLIMITED") else parse_time(limits[0])


def slurm_executors(folder: str, partition: str, time_limit: str | None, gres: str, parallel: int | None,
                    flags: list[str], name: str):
    """A function making submitit SlurmExecutors for array tasks of one GPU each, its arguments
    checked now (before any work). Without `time_limit`, the partition's longest (sinfo); `flags`
    are sbatch's own long options without the dashes (KEY=VALUE, or KEY)."""
    extra = {}
    for flag in flags:
        key, has_value, value = flag.removeprefix("--").partition("=")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise LaunchError(f"--sbatch-flag {flag!r}: give sbatch's long option without dashes, "
                              "KEY=VALUE or KEY (e.g. account=abc, constraint=a100, exclusive)")
        extra[key] = value if has_value else True
    extra.setdefault("requeue", True)  # RunTask's requeue needs it where the site's JobRequeue is 0
    if parallel is not None and parallel < 1:
        raise LaunchError(f"--parallel {parallel}: give how many tasks may run at once (1 or more)")
    minutes = parse_time(time_limit) if time_limit is not None else None
    if any(shutil.which(tool) is None for tool in ("sbatch", "srun", "squeue")):
        raise LaunchError("sbatch, srun and squeue are not all on PATH: run the launch on a Slurm login node "
                          "(docs/cluster.md), or use GPUS=... make -jN on one node")
    # Asked with --time too: sbatch would refuse an unknown partition only after the shared inputs are
    # made, and a limit above the partition's leaves the tasks pending for ever where Slurm does not enforce it.
    longest = partition_time_limit(partition)
    if minutes is None:
        minutes = longest
    elif longest and (minutes == 0 or minutes > longest):
        raise LaunchError(f"--time {time_limit} ({'no limit' if minutes == 0 else f'{minutes} min'}) is above partition "
                          f"{partition!r}'s longest, {longest} min: give at most that (or leave --time out)")
    from submitit.core.utils import JobPaths

    logs = JobPaths.get_first_id_independent_folder(folder)  # as submitit reads --logs: ~, %j, %A, %a, %t
    try:
        logs.mkdir(parents=True, exist_ok=True)
        writable = os.access(logs, os.W_OK | os.X_OK)
    except OSError as err:
        writable, why = False, err.strerror
    else:
        why = "not writable"
    if not writable:
        raise LaunchError(f"the log folder {logs} cannot be used ({why}): give --logs a folder on a shared "
                          "filesystem you can write to")

    def make():
        import submitit

        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(
            job_name=name, partition=partition, time=minutes, gres=gres, stderr_to_stdout=True,
            additional_parameters=extra,
            # The task imports replication.launch to unpickle run_task: this checkout, on every node.
            setup=[f"export PYTHONPATH={shlex.quote(str(storage.PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
            **({"array_parallelism": parallel} if parallel else {}))
        return executor

    return make


def _gone_from_queue(jobs) -> set[str] | None:
    """Ids of the tasks of `jobs` that squeue no longer lists; None if squeue cannot say."""
    arrays = sorted({job.job_id.split("_")[0] for job in jobs})
    result = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(arrays)],
                            capture_output=True, text=True)
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        return None
    listed = set(result.stdout.split())
    return {job.job_id for job in jobs if job.job_id not in listed}


def wait(jobs: list, poll_seconds: float, queue: bool) -> list[dict]:
    """Wait for every task of `jobs`; one outcome each: run_task's record, or {"error": ...}.

    `queue` (Slurm's jobs): a task is over when its result file is there, or when squeue has not
    listed it for a while (a grace for a shared filesystem's caches) and still no result file is:
    Slurm killed it (time limit, memory, node failure, scancel), and says why in its log. submitit
    would ask sacct, which clusters without accounting lack (and the test cluster does)."""
    outcomes, gone_since = {}, {}
    grace = max(3 * poll_seconds, 10)
    while len(outcomes) < len(jobs):
        pending = [job for job in jobs if job.job_id not in outcomes]
        for job in pending:
            if job.paths.result_pickle.exists() if queue else job.done():  # done() runs a debug job
                outcomes[job.job_id] = _outcome(job)
        pending = [job for job in pending if job.job_id not in outcomes]
        gone = _gone_from_queue(pending) if pending and queue else None
        for job in pending if gone is not None else []:
            if job.job_id not in gone:
                gone_since.pop(job.job_id, None)
            elif time.time() - gone_since.setdefault(job.job_id, time.time()) > grace:
                outcomes[job.job_id] = {"error": "ended without a result (time limit, memory, node "
                                                 "failure or scancel: its log says which)"}
        if len(outcomes) < len(jobs):
            time.sleep(poll_seconds)
    return [outcomes[job.job_id] for job in jobs]


def _failure(command: str, status: int) -> str:
    """What a failed command's status means. A negative status is the signal that ended it:
    Slurm ends a task at its time limit, at scancel and at preemption with SIGTERM (SIGKILL follows
    KillWait later), which submitit's own process outlives, so run_task still reports."""
    if status >= 0:
        return f"`{command}` exited with status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = f"signal {-status}"
    why = (" (Slurm's time limit, scancel or preemption: its log says which)" if name == "SIGTERM"
           else " (out of memory, or killed: its log says which)" if name == "SIGKILL" else "")
    return f"`{command}` was killed by {name}, status {status}{why}"


def _outcome(job) -> dict:
    try:
        return job.result()
    except Exception as err:  # submitit's error for a task whose Python failed (its traceback)
        # Slurm's: "... with trace:\n-----\n<traceback>\n-----\nYou can check full logs ... - <path>":
        # the traceback's last line says what failed (its log path is printed beside it anyway).
        text = str(err)
        parts = text.split("----------------------")
        lines = [line for line in (parts[1] if len(parts) >= 3 else text).splitlines() if line.strip()]
        if "timed-out too many times" in text:  # submitit's UncompletedJobError after its last requeue
            # submitit counts a warning signal late in --time as a time-out (a late preemption too).
            return {"error": "submitit counted a time-out once more than it requeues (Slurm's time-limit warning, "
                             "or a preemption late in --time; each requeue resumed from the last finished epoch): "
                             "give a longer --time, and launch again to resume it"}
        return {"error": lines[-1].strip() if lines else type(err).__name__}


def launch(config_paths: list[str], make_executor, poll_seconds: float = 30, log=sys.stdout) -> int:
    """Submit the stale tasks of the configs' rules wave by wave, wait, then build the reports.
    `make_executor()` returns a submitit executor (Slurm's, or DebugExecutor in tests). Returns 0
    when everything is made, 1 when a task failed (each reported with its log)."""
    from replication import pipeline, rundir

    configs = [config_lib.load(path) for path in config_paths]
    for config in configs:
        rundir.check(config)  # as make does first: an edited config's old runs are refused
    rules, phony = parse_rules(pipeline.rules("launch", config_paths))
    all_tasks = tasks(rules, phony)
    stale = [task for task in all_tasks if task.stale()]
    print(f"[launch] {len(all_tasks)} tasks, {len(stale)} with results missing", file=log, flush=True)
    folders = {str(Path(config.results_dir).resolve()) for config in configs}
    if stale:
        executor = make_executor()  # before the shared inputs, which are made for it
        if _is_slurm(executor):
            refuse_a_second_launch(folders)
        prepare(configs, {task.name for task in stale}, [t for task in stale for t in task.stale()], log)
    python, root = sys.executable, os.getcwd()
    submitted, failed = set(), []
    own: set[str] = set()  # this launch's arrays
    while ready := [task for task in all_tasks if task.stale() and task.ready() and task.name not in submitted]:
        if _is_slurm(executor):
            refuse_a_second_launch(folders, own)
        jobs = _submit(executor, [[command_line(task.commands[t], python) for t in task.stale()] for task in ready],
                       [root] * len(ready))
        submitted.update(task.name for task in ready)
        job_id = jobs[0].job_id.split("_")[0]
        own.add(job_id)
        if _is_slurm(executor):
            _remember(job_id, folders)
        print(f"[launch] submitted {len(ready)} task(s), one GPU each, as job {job_id}; "
              f"the first task's log: {jobs[0].paths.stdout}", file=log, flush=True)
        try:
            outcomes = wait(jobs, poll_seconds, _is_slurm(executor))
        except KeyboardInterrupt:  # the tasks run on: a launch now is refused while they are queued
            print(f"[launch] interrupted: job {job_id} keeps running (`scancel {job_id}` stops it); launch "
                  "again once it has ended", file=log, flush=True)
            return 130
        if _is_slurm(executor):
            _remember(job_id, None)
        for task, job, outcome in zip(ready, jobs, outcomes):
            where = f"log: {job.paths.stdout}"
            if "error" in outcome or outcome["failed"]:
                problem = outcome.get("error") or _failure(outcome["failed"], outcome["status"])
                failed.append(task)
                print(f"[launch] FAILED {task.name}: {problem} ({where})", file=log, flush=True)
            else:
                print(f"[launch] done {task.name} on {outcome['host']} with CUDA_VISIBLE_DEVICES="
                      f"{outcome['cuda_visible_devices']} in {outcome['ended'] - outcome['started']:.0f} s "
                      f"({where})", file=log, flush=True)
    for task in all_tasks:
        if task.stale() and task.name not in submitted:
            print(f"[launch] blocked {task.name}: needs {', '.join(n for n in task.needs if not Path(n).exists())}",
                  file=log, flush=True)
    return _reports(rules, python, log) or (1 if failed else 0)


JOBS_FILE = "jobs.json"  # {array job id: [results folders]} of launches whose jobs may still run


def _jobs_path() -> Path:
    return storage.cache_directory() / "launch" / JOBS_FILE


JOB_NAME = "replication"  # every launch's job name (slurm_executors' `name` in __main__)


def _queued_arrays() -> set[str] | None:
    """The base job ids (an array's own id for each of its tasks) of the jobs named JOB_NAME that
    squeue lists, hidden partitions too; None if it cannot say."""
    try:
        result = subprocess.run(["squeue", "-h", "--all", "-o", "%F %j"], capture_output=True, text=True)
    except OSError:
        return None
    if result.returncode != 0:
        return None
    return {line.split()[0] for line in result.stdout.splitlines() if line.split()[1:] == [JOB_NAME]}


def _earlier_jobs() -> dict:
    """JOBS_FILE's record; {} where it is missing or damaged (a guard, not a result: rewritten)."""
    try:
        record = storage.read_json(_jobs_path()) if _jobs_path().exists() else {}
    except storage.StorageError:
        return {}
    return {str(job): [str(f) for f in folders] for job, folders in record.items() if isinstance(folders, list)}


def refuse_a_second_launch(folders: set[str], own: set[str] = frozenset()) -> None:
    """A launch whose job array still runs makes runs of these results folders: a second launch now
    would submit the same runs again, two tasks training one run directory at once. Refused in one
    line naming the job (not one of this launch's `own`); jobs squeue no longer lists are dropped
    from the record. Asked before the shared inputs and again before each wave: two launches started
    within minutes both pass the first (no lock across login nodes makes it exact)."""
    record, queued = _earlier_jobs(), _queued_arrays()
    if not record or queued is None:
        return
    for job, made in record.items():
        if job in own:
            continue
        shared = sorted(set(made) & folders)
        if job in queued and shared:
            raise LaunchError(f"job {job} of an earlier launch is still in the queue and makes results in {shared[0]}: "
                              f"launch again once it has ended (`squeue -j {job}`), or stop it with `scancel {job}`")
    storage.atomic_write_json(_jobs_path(), {job: made for job, made in record.items() if job in queued})


def _remember(job: str, folders: set[str] | None) -> None:
    """Record a submitted array (`folders`: the results folders it makes), or forget it (None)."""
    record = _earlier_jobs()
    if folders is None:
        record.pop(job, None)
    else:
        record[job] = sorted(folders)
    storage.atomic_write_json(_jobs_path(), record)


def _submit(executor, commands: list, roots: list) -> list:
    """One job array of RunTask over `commands`; sbatch's refusal (an unknown account or qos, a --gres
    or --sbatch-flag the site rejects, an array above its MaxArraySize) as one LaunchError line, not
    submitit's traceback with sbatch's message printed above it."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    printed = io.StringIO()  # submitit prints sbatch's stderr when it fails; the error below says it
    try:
        with contextlib.redirect_stderr(printed):
            jobs = executor.map_array(RunTask(), commands, roots)
    except (FailedJobError, FailedSubmissionError) as err:
        why = " ".join(str(err).split()) or " ".join(printed.getvalue().split()) or type(err).__name__
        raise LaunchError(f"sbatch refused the job array ({why}): fix the option it names (--partition, --time, "
                          "--gres, --sbatch-flag) and launch again; runs already finished are kept") from None
    sys.stderr.write(printed.getvalue())
    return jobs


def _is_slurm(executor) -> bool:
    import submitit

    return isinstance(executor, submitit.SlurmExecutor)


def _reports(rules: dict[str, Rule], python: str, log) -> int:
    """Build each report whose inputs are all there and newer than it (Make's rule), here."""
    status = 0
    for rule in rules.values():
        if not rule.commands or not rule.prerequisites or rule.commands[0].startswith("$(RUN)"):
            continue
        missing = [p for p in rule.prerequisites if not Path(p).exists()]
        if missing:
            print(f"[launch] not built: {rule.target} ({len(missing)} results missing)", file=log, flush=True)
            continue
        target = Path(rule.target)
        if target.exists() and all(Path(p).stat().st_mtime <= target.stat().st_mtime for p in rule.prerequisites):
            continue
        print(f"[launch] building {rule.target}", file=log, flush=True)
        if subprocess.run(command_line(rule.commands[0], python), stdout=subprocess.DEVNULL).returncode != 0:
            print(f"[launch] FAILED {rule.target}: its command's error is above", file=log, flush=True)
            status = 1
    return status
