"""`python -m replication launch slurm` (issue 27): tasks from Make's rules, waves, a second launch
that submits nothing, failures reported with their logs.

Most tests run the tasks in this process through submitit's DebugExecutor. The Slurm tests need a
real cluster: the single-node one with two fake GPUs that `.ci/slurm-up` starts (root, Debian's
slurm-wlm), named by TEST_SLURM_CLUSTER; without it they skip, unless REQUIRE_SLURM is set (CI)."""

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli, one_error_line, stamp
from replication import launch, pipeline, storage


def tiny_profile(tmp_path, name="tiny.yaml", **overrides) -> Path:
    """tests/tiny-profile.yaml (two runs, seconds each) with its results in tmp_path."""
    data = yaml.safe_load((ROOT / "tests" / "tiny-profile.yaml").read_text())
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**data, "results_dir": str(tmp_path / "results"), **overrides}))
    return path


def targets(config: Path) -> list[str]:
    """Every file the rules of `config` make (runs, measurements, landscapes, the report)."""
    rules, phony = launch.parse_rules(pipeline.rules("tiny", [str(config)]))
    return [target for target, rule in rules.items() if target not in phony and rule.commands]


def test_tasks_hold_a_run_with_its_measurements_and_wait_for_what_they_need(tmp_path):
    config = tiny_profile(tmp_path, seeds=[0, 1], warm_start={"enabled": True, "epochs": 1}, epochs=2,
                          keep_iterates=[1, 2])
    rules, phony = launch.parse_rules(pipeline.rules("tiny", [str(config)]))
    found = {task.name: task for task in launch.tasks(rules, phony)}
    trial = tmp_path / "results" / "F1_synthetic_mnist"
    for seed in (0, 1):
        sb, lb = trial / "sb" / f"seed{seed}", trial / "lb" / f"seed{seed}"
        task = found[str(sb)]
        assert task.needs == [] and task.targets[0] == f"{sb}/metrics.json"
        assert f"{sb}/sharpness/full_eps0.001.json" in task.targets and f"{sb}/iterates/measured.json" in task.targets
        assert task.commands[task.targets[0]].startswith("$(RUN) $(PY) -m replication train ")
        # Figure 5's piggyback run starts from SB's iterate: a task of its own, after SB's.
        piggyback = found[str(trial / "lb-from-sb1" / f"seed{seed}")]
        assert piggyback.needs == [f"{sb}/metrics.json"]
        # Both landscape paths need SB and LB: one task, after both.
        landscape = found[f"{trial}/landscape/seed{seed}_linear.pdf"]
        assert landscape.needs == [f"{sb}/metrics.json", f"{lb}/metrics.json"]
        assert landscape.targets == [f"{trial}/landscape/seed{seed}_linear.pdf",
                                     f"{trial}/landscape/seed{seed}_curvilinear.pdf"]
    # Every GPU target is in exactly one task; checks and the report are not tasks.
    in_tasks = [target for task in found.values() for target in task.targets]
    gpu = [target for target, rule in rules.items() if rule.commands and rule.commands[0].startswith("$(RUN)")]
    assert sorted(in_tasks) == sorted(gpu) and not any(t.endswith("REPORT.md") for t in in_tasks)


def test_make_q_cannot_find_stale_runs(tmp_path):
    """Why staleness is read from the files: `make -q` calls a finished run stale, through the
    phony check every run follows (order-only)."""
    config = tiny_profile(tmp_path)
    rules = pipeline.rules("tiny", [str(config)])
    (tmp_path / "rules.mk").write_text(rules)
    run = tmp_path / "results" / "F1_synthetic_mnist" / "sb" / "seed0" / "metrics.json"
    run.parent.mkdir(parents=True)
    run.write_text("{}\n")
    asked = subprocess.run(["make", "-q", "-f", str(tmp_path / "rules.mk"), f"PY={sys.executable}", str(run)],
                           cwd=tmp_path, capture_output=True)
    assert asked.returncode == 1  # "needs remaking", though it exists
    task = next(t for t in launch.tasks(*launch.parse_rules(rules)) if t.name == str(run.parent))
    assert task.stale() == task.targets[1:]  # the files say: only its measurement is missing


class Executors:
    """Debug executors (tasks run here, one after another), counted."""

    def __init__(self, folder):
        self.folder, self.made = folder, 0

    def __call__(self):
        import submitit

        self.made += 1
        return submitit.DebugExecutor(str(self.folder / "%j"))


def run_launch(config, executors) -> tuple[int, str]:
    out = io.StringIO()
    status = launch.launch([str(config)], executors, poll_seconds=0.1, log=out)
    return status, out.getvalue()


def test_launch_makes_everything_then_a_second_launch_submits_nothing(tmp_path, monkeypatch):
    config = tiny_profile(tmp_path)
    executors = Executors(tmp_path / "logs")
    # First, both runs are killed after their epoch (a node lost, a task out of memory): each is
    # reported with its log, the landscape waits for them, and no report is built.
    monkeypatch.setenv(storage.FAILPOINT_VARIABLE, "epoch:1:end")
    status, out = run_launch(config, executors)
    assert status == 1
    failures = re.findall(r"FAILED (\S+): `[^`]* train [^`]*` was killed by SIGKILL, status -9 \(out of memory, or killed: its log says which\) \(log: (\S+)\)", out)
    assert sorted(Path(name).parent.name for name, _ in failures) == ["lb", "sb"], out
    assert all(Path(log).parent.is_dir() for _, log in failures)
    assert "blocked " in out and "landscape/seed0_linear.pdf: needs" in out
    assert f"not built: {tmp_path}/results/REPORT.md" in out
    # The next launch submits them again; they resume from their checkpoints and finish.
    monkeypatch.delenv(storage.FAILPOINT_VARIABLE)
    status, out = run_launch(config, executors)
    assert status == 0, out
    assert out.count("submitted ") == 2  # the runs, then the landscape that needed both
    assert [t for t in targets(config) if not Path(t).exists()] == []
    # Everything is there: a second launch submits nothing and rebuilds nothing.
    made, report_time = executors.made, stamp(tmp_path / "results" / "REPORT.md")
    status, out = run_launch(config, executors)
    assert status == 0 and executors.made == made and "submitted" not in out
    assert stamp(tmp_path / "results" / "REPORT.md") == report_time
    # A missing measurement is one task with one command, its run untouched.
    sharpness = tmp_path / "results" / "F1_synthetic_mnist" / "lb" / "seed0" / "sharpness" / "full_eps0.001.json"
    sharpness.unlink()
    status, out = run_launch(config, executors)
    assert status == 0 and out.count("submitted ") == 1 and "1 with results missing" in out
    assert "loading synthetic_mnist once before the tasks start" in out  # its data, though its run is done
    assert sharpness.exists() and f"building {tmp_path}/results/REPORT.md" in out

    # The x0 the launch made before any task ran is the one training makes by itself.
    alone = tiny_profile(tmp_path, name="alone.yaml", results_dir=str(tmp_path / "alone"))
    cli("train", alone, "--seed", "0", "--regime", "sb", check=True)
    digest = [storage.read_json(folder / "F1_synthetic_mnist" / "sb" / "seed0" / "metrics.json")["x0_sha256"]
              for folder in (tmp_path / "results", tmp_path / "alone")]
    assert digest[0] == digest[1]


@pytest.mark.parametrize("options, problem", [
    (["--time", "ninety"], "--time 'ninety' is not a Slurm time limit"),
    (["--sbatch-flag", "--Account x"], "--sbatch-flag '--Account x': give sbatch's long option"),
])
def test_bad_launch_options_are_one_line_before_any_work(tmp_path, options, problem):
    config = tiny_profile(tmp_path)
    result = cli("launch", "slurm", config, "--partition", "p", *options)
    assert problem in one_error_line(result.returncode, result.stderr)
    assert not (tmp_path / "results").exists()


def test_launch_without_slurm_says_where_to_run_it(tmp_path):
    config = tiny_profile(tmp_path)
    result = cli("launch", "slurm", config, "--partition", "p", env={"PATH": str(tmp_path)})
    assert "sbatch, srun and squeue are not all on PATH" in one_error_line(result.returncode, result.stderr)


def fake_slurm(tmp_path, sinfo="echo 2:00:00", sbatch="echo Submitted batch job 7", squeue="exit 0") -> dict:
    """An environment whose PATH finds sinfo, sbatch, srun and squeue as these shell lines (no
    cluster), and whose cache (the launch's record of its jobs) is in tmp_path."""
    folder = tmp_path / "fake-bin"
    folder.mkdir(exist_ok=True)
    for name, body in (("sinfo", sinfo), ("sbatch", sbatch), ("srun", "exit 0"), ("squeue", squeue)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "REPLICATION_CACHE": str(tmp_path / "cache")}


@pytest.mark.parametrize("options, sinfo, problem", [
    # Above the partition's longest: pending for ever where Slurm does not enforce it, else refused late.
    (["--time", "3:00:00"], "echo 2:00:00", "--time 3:00:00 (180 min) is above partition 'p''s longest, 120 min"),
    (["--time", "0"], "echo 2:00:00", "--time 0 (no limit) is above partition 'p''s longest, 120 min"),
    # An unknown partition is asked of sinfo with --time given too (sbatch refused it only after the work).
    (["--time", "10"], "echo 'sinfo: error: invalid partition' >&2; exit 1", "partition 'p' is not known to Slurm"),
    (["--poll", "0"], "echo 2:00:00", "--poll 0 is not a finite number of seconds >= 1"),
    (["--poll", "inf"], "echo 2:00:00", "--poll inf is not a finite number of seconds >= 1"),
])
def test_launch_options_slurm_would_refuse_late_are_one_line_before_any_work(tmp_path, options, sinfo, problem):
    config = tiny_profile(tmp_path)
    result = cli("launch", "slurm", config, "--partition", "p", *options, env=fake_slurm(tmp_path, sinfo=sinfo))
    assert problem in one_error_line(result.returncode, result.stderr)
    assert not (tmp_path / "results").exists()


def test_a_log_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path):
    config = tiny_profile(tmp_path)
    (tmp_path / "a-file").write_text("")
    result = cli("launch", "slurm", config, "--partition", "p", "--logs", f"{tmp_path}/a-file/logs/%j",
                 env=fake_slurm(tmp_path))
    assert f"the log folder {tmp_path}/a-file/logs cannot be used" in one_error_line(result.returncode, result.stderr)
    assert not (tmp_path / "results").exists()


def test_sbatch_refusing_the_array_is_one_line_not_a_traceback(tmp_path):
    """An account, qos or --gres the site rejects is known only when sbatch runs: submitit raised
    its FailedJobError (a traceback, exit 1) after printing sbatch's message."""
    config = tiny_profile(tmp_path)
    refuse = "echo 'sbatch: error: Batch job submission failed: Invalid account or account/partition combination " \
             "specified' >&2; exit 1"
    result = cli("launch", "slurm", config, "--partition", "p", "--logs", f"{tmp_path}/logs/%j",
                 env=fake_slurm(tmp_path, sbatch=refuse))
    line = one_error_line(result.returncode, result.stderr)
    assert "sbatch refused the job array (sbatch: error: Batch job submission failed: Invalid account" in line
    assert "runs already finished are kept" in line


def test_a_second_launch_while_the_first_ones_jobs_run_is_one_line(tmp_path):
    """Two launches at once would submit the same runs twice: two tasks training one run directory."""
    config = tiny_profile(tmp_path)
    environment = fake_slurm(tmp_path, squeue="echo '7 replication'; echo '8 someone-elses'")
    storage.atomic_write_json(tmp_path / "cache" / "launch" / launch.JOBS_FILE,
                              {"7": [str((tmp_path / "results").resolve())]})
    result = cli("launch", "slurm", config, "--partition", "p", env=environment)
    assert "job 7 of an earlier launch is still in the queue and makes results in " in \
        one_error_line(result.returncode, result.stderr)
    assert not (tmp_path / "results").exists()


def test_the_record_of_launched_jobs_keeps_only_those_still_queued(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLICATION_CACHE", str(tmp_path))
    launch._remember("7", {"/results/a"})
    launch._remember("8", {"/results/b"})
    monkeypatch.setattr(launch, "_queued_arrays", lambda: {"8"})
    launch.refuse_a_second_launch({"/results/a"})  # job 7 has ended: no refusal, and it is dropped
    assert storage.read_json(tmp_path / "launch" / launch.JOBS_FILE) == {"8": ["/results/b"]}
    with pytest.raises(launch.LaunchError, match="job 8 of an earlier launch"):
        launch.refuse_a_second_launch({"/results/b", "/results/c"})
    launch._remember("8", None)  # its wave was waited for
    assert storage.read_json(tmp_path / "launch" / launch.JOBS_FILE) == {}


def test_a_task_is_requeued_by_submitit_at_its_time_limit(tmp_path, monkeypatch):
    """submitit requeues a task at Slurm's time-limit warning or a preemption only where the function
    it submitted has `checkpoint`: the task submitted again is the same commands (each run resumes
    from its epoch), pickled by reference to this module, as the node unpickles it."""
    import cloudpickle
    from submitit.core.utils import DelayedSubmission, FailedJobError

    task, commands = launch.RunTask(), [["python", "-c", "pass"]]
    again = task.checkpoint(commands, "/project")
    assert again.function is task and again.args == (commands, "/project") and again.kwargs == {}
    back = cloudpickle.loads(cloudpickle.dumps(DelayedSubmission(task, commands, "/project")))
    assert type(back.function) is launch.RunTask and b"replication.launch" in cloudpickle.dumps(task)

    class Refusing:  # what the launch submits, then sbatch's refusal
        def map_array(self, function, *args):
            self.function = function
            raise FailedJobError("sbatch: error: Invalid qos specification")

    executor = Refusing()
    monkeypatch.setenv("REPLICATION_CACHE", str(tmp_path / "cache"))
    with pytest.raises(launch.LaunchError, match=r"sbatch refused the job array \(sbatch: error: Invalid qos"):
        launch.launch([str(tiny_profile(tmp_path))], lambda: executor, log=io.StringIO())
    assert isinstance(executor.function, launch.RunTask) and hasattr(executor.function, "checkpoint")


def test_a_task_whose_python_failed_is_reported_by_its_error_not_its_log_path():
    # submitit's error for a failed task ends with the log paths; the traceback's last line says why.
    from submitit.core.utils import FailedJobError

    class Job:
        def __init__(self, last_line):
            self.last_line = last_line

        def result(self):
            raise FailedJobError("Job (task=0) failed during processing with trace:\n----------------------\n"
                                 f"Traceback (most recent call last):\n  File \"x\", line 1\n{self.last_line}\n"
                                 "----------------------\nYou can check full logs with 'job.stderr(0)' and "
                                 "'job.stdout(0)'or at paths:\n  - /logs/1_0_0_log.err\n  - /logs/1_0_0_log.out")

    assert launch._outcome(Job("OSError: [Errno 28] No space left on device")) == {
        "error": "OSError: [Errno 28] No space left on device"}
    # The 4th time-out (submitit's words, as a real cluster gave them at a 1-minute limit) says what to do.
    timed_out = launch._outcome(Job("submitit.core.utils.UncompletedJobError: Job not requeued because: "
                                    "timed-out too many times."))
    assert "give a longer --time, and launch again to resume it" in timed_out["error"]
    assert timed_out["error"].startswith("submitit counted a time-out once more than it requeues")


def test_time_limits_in_slurm_forms():
    assert [launch.parse_time(t) for t in ("90", "5:30", "1:00:01", "2-3", "1-00:30", "0-01:30:00")] == \
           [90, 6, 61, 51 * 60, 24 * 60 + 30, 90]


# --- On a real single-node Slurm with two fake GPUs (.ci/slurm-up) ---------------------------------

def slurm_environment(tmp_path=None) -> dict:
    """The test cluster's environment; with `tmp_path`, the launch's cache (its record of jobs) there."""
    cluster = os.environ.get("TEST_SLURM_CLUSTER")
    if not cluster or not (Path(cluster) / "slurm.conf").is_file():
        if os.environ.get("REQUIRE_SLURM"):
            pytest.fail(f"REQUIRE_SLURM is set, but TEST_SLURM_CLUSTER ({cluster!r}) names no cluster "
                        "started by .ci/slurm-up")
        pytest.skip("no test Slurm cluster: start one with `.ci/slurm-up` (root, slurm-wlm) and set "
                    "TEST_SLURM_CLUSTER to the folder it prints")
    # Without the Slurm variables of a job this suite may itself run in (an account, a partition):
    # they would reach the test cluster's sbatch, salloc and srun.
    inherited = {key: value for key, value in os.environ.items()
                 if not key.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    return {**inherited, "SLURM_CONF": str(Path(cluster) / "slurm.conf"),
            **({"REPLICATION_CACHE": str(tmp_path / "cache")} if tmp_path else {})}


def test_launch_on_slurm_gives_each_run_its_own_gpu(tmp_path):
    environment = slurm_environment(tmp_path)
    config = tiny_profile(tmp_path)
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "replication", "launch", "slurm", str(config), "--partition", "debug",
               "--time", "10", "--poll", "1", "--logs", f"{logs}/%j"]
    first = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert [t for t in targets(config) if not Path(t).exists()] == []
    devices = dict(re.findall(r"done (\S+/seed0) on \S+ with CUDA_VISIBLE_DEVICES=(\S+)", first.stdout))
    assert sorted(devices.values()) == ["0", "1"], first.stdout  # the two runs, at once, on two GPUs
    logged = sorted(logs.iterdir())
    second = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "submitted" not in second.stdout and sorted(logs.iterdir()) == logged


def test_an_unknown_partition_is_one_line(tmp_path):
    environment = slurm_environment(tmp_path)
    result = subprocess.run([sys.executable, "-m", "replication", "launch", "slurm", str(tiny_profile(tmp_path)),
                             "--partition", "no-such-partition"], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert "partition 'no-such-partition' is not known to Slurm" in one_error_line(result.returncode,
                                                                                     result.stderr)


def training_processes(tmp_path) -> list[int]:
    """The pids of the SB trainings of the tiny profile in tmp_path (from /proc: no procps needed)."""
    pattern = re.compile(rf"replication train {re.escape(str(tmp_path))}/\S+ .*--regime sb")
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if pattern.search(b" ".join(words).decode(errors="replace")):
            found.append(int(cmdline.parent.name))
    return found


def start_killable_launch(tmp_path, environment) -> tuple[subprocess.Popen, Path]:
    """A launch of the tiny profile, returned once its SB task is running its training command (the
    task's log says so, and the process is there: the log's line is printed just before it starts):
    killing it earlier races submitit's start-up."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "replication", "launch", "slurm", str(tiny_profile(tmp_path)), "--partition",
         "debug", "--time", "10", "--poll", "1", "--logs", f"{tmp_path}/logs/%j"],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:
        assert time.time() < deadline and launcher.poll() is None, "no task started"
        time.sleep(0.5)
        for log in (tmp_path / "logs").glob("*/*_log.out"):
            if (re.search(r"\[task\] \S+ -m replication train .* --regime sb", log.read_text(errors="replace"))
                    and training_processes(tmp_path)):
                return launcher, log


def test_a_task_cancelled_by_slurm_is_reported_as_its_sigterm(tmp_path):
    """scancel (and a preemption or time limit Slurm gave no warning signal of) ends a task with
    SIGTERM (SIGKILL only KillWait later): submitit's process outlives it, so the report names the
    signal and what sends it."""
    environment = slurm_environment(tmp_path)
    launcher, log = start_killable_launch(tmp_path, environment)
    task = "_".join(log.name.split("_")[:2])  # 1_0_0_log.out: array 1, task 0
    subprocess.run(["scancel", task], env=environment, check=True)
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, out + err[-3000:]
    assert re.search(r"FAILED \S+/sb/seed0: `[^`]* train [^`]*` was killed by SIGTERM, status -15 \(Slurm's "
                     r"time limit, scancel or preemption: its log says which\) \(log: \S+_log\.out\)", out), out


def test_a_task_killed_without_a_result_is_found_through_squeue(tmp_path):
    """A task whose own process dies (a lost node, a memory limit that kills the whole step) leaves no
    result; it is found through squeue, since this cluster, like some, has no accounting for
    submitit's sacct."""
    environment = slurm_environment(tmp_path)
    launcher, log = start_killable_launch(tmp_path, environment)
    training = training_processes(tmp_path)
    assert len(training) == 1, training
    parent = int(Path(f"/proc/{training[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for pid in (parent, training[0]):  # submitit's process, then its command
        os.kill(pid, signal.SIGKILL)
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 1, out + err[-3000:]
    assert re.search(r"FAILED \S+/sb/seed0: ended without a result .* \(log: \S+_log\.out\)", out), out


def test_a_task_signalled_by_slurm_is_requeued_and_resumes_its_run(tmp_path):
    """Slurm's warning signal (SIGUSR2: at the time limit, as launch asks, or a preemption where the
    site sends it) makes submitit call RunTask.checkpoint and requeue the task, which resumes its run
    from the last finished epoch instead of starting again. Opt-in (TEST_SLURM_REQUEUE=1): Slurm holds
    a requeued job for minutes before it runs again, too long for CI. The signal is sent by hand once
    training is under way, so where it lands is not left to the controller's timer; with --time 10,
    submitit counts any such signal as a time-out (its path here), not as a preemption."""
    if not os.environ.get("TEST_SLURM_REQUEUE"):
        pytest.skip("slow: set TEST_SLURM_REQUEUE=1 (with TEST_SLURM_CLUSTER) to run it")
    environment = slurm_environment(tmp_path)
    config = tiny_profile(tmp_path, epochs=40)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "replication", "launch", "slurm", str(config), "--partition", "debug",
         "--time", "10", "--poll", "1", "--logs", f"{tmp_path}/logs/%j"],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, log = time.time() + 300, None
    while log is None:
        assert time.time() < deadline and launcher.poll() is None, "the SB run did not start training"
        time.sleep(0.5)
        log = next((path for path in (tmp_path / "logs").glob("*/*_log.out")
                    if re.search(r"\[F1 SB \(batch 32\) seed 0\] epoch 3/40", path.read_text(errors="replace"))), None)
    task = "_".join(log.name.split("_")[:2])  # 1_0_0_log.out: array 1, task 0
    subprocess.run(["scancel", "--signal=USR2", task], env=environment, check=True)
    out, err = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, out + err[-3000:]
    text = log.read_text(errors="replace")
    assert "Calling checkpoint method." in text and f"Requeued job {task}" in text, text[-3000:]
    resumed = re.search(r"\] resuming after epoch (\d+)", text)
    assert resumed and int(resumed.group(1)) >= 3, text[-3000:]  # not trained again from x0
    history = (tmp_path / "results" / "F1_synthetic_mnist" / "sb" / "seed0" / "history.csv").read_text()
    assert [line.split(",")[0] for line in history.splitlines()[1:]] == [str(e) for e in range(1, 41)]
