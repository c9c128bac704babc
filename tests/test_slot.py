"""The GPU slot wrapper under `make -j` (issue 27): every GPU recipe gets a GPU of its own.

No GPU is needed: the wrapper only hands out CUDA_VISIBLE_DEVICES, so the recipes here record what
they were given and when, and the tests check that no two jobs held one GPU at once."""

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, cli, one_error_line
from replication import launch, pipeline


@pytest.fixture(autouse=True)
def lock_folder(tmp_path, monkeypatch):
    """A lock folder of the test's own: slots held elsewhere on this machine cannot interfere."""
    folder = tmp_path / "locks"
    monkeypatch.setenv("REPLICATION_GPU_LOCKS", str(folder))
    return folder


def makefile_run(**variables) -> str:
    """$(RUN) as the project's Makefile sets it for these command-line variables."""
    assignments = [f"{key}={value}" for key, value in variables.items()]
    result = subprocess.run(["make", "-s", "--no-print-directory", "-f", str(ROOT / "Makefile"),
                             f"PY={sys.executable}", *assignments, "--eval", "print-run: ; @echo '$(RUN)'",
                             "print-run"], capture_output=True, text=True, cwd=ROOT, check=True)
    return result.stdout.strip()


def test_makefile_sets_run_from_gpus():
    assert makefile_run() == ""  # one GPU, or a CPU: recipes run as they are
    assert makefile_run(GPUS="0 1") == f"{sys.executable} -m replication slot --gpus \"0 1\" --per-gpu 1 --"
    assert makefile_run(GPUS="0 1", SLOTS_PER_GPU=2).endswith("--per-gpu 2 --")
    assert makefile_run(GPUS="0 1", RUN="srun -n1") == "srun -n1"  # inside a Slurm allocation


def record_jobs(tmp_path, run: str, jobs: int, parallel: int, seconds: float = 0.6, before=(),
                environment=None, together: int = 1) -> list[tuple]:
    """`make -j parallel` of `jobs` recipes behind `run` (make itself behind the command `before`);
    each records (GPU, start, end, preallocate). A job ends only once `together` jobs have started
    (or after 30 s): jobs the wrapper lets run at once then overlap however slowly a loaded machine
    starts them, where a fixed sleep alone made the overlap a race."""
    barrier = (f"i=0; while [ $$(ls started.* | wc -l) -lt {together} ] && [ $$i -lt 300 ]; "
               "do sleep 0.1; i=$$((i+1)); done; ")
    recipe = ("$(RUN) sh -c 'start=$$(date +%s.%N); touch started.$@; " + barrier + "sleep " + str(seconds) + "; "
              "echo \"$${CUDA_VISIBLE_DEVICES-none} $$start $$(date +%s.%N) "
              "$${XLA_PYTHON_CLIENT_PREALLOCATE-unset}\" > $@'")
    targets = [f"job{i}" for i in range(jobs)]
    makefile = tmp_path / "jobs.mk"
    makefile.write_text(f"all: {' '.join(targets)}\n" + "".join(f"{t}:\n\t{recipe}\n" for t in targets))
    done = subprocess.run([*before, "make", f"-j{parallel}", "-f", str(makefile), f"RUN={run}", "all"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**(environment or os.environ), "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    rows = [(tmp_path / t).read_text().split() for t in targets]
    return [(gpu, float(start), float(end), preallocate) for gpu, start, end, preallocate in rows]


def most_at_once(intervals) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def test_make_j_gives_each_job_a_gpu_of_its_own(tmp_path):
    jobs = record_jobs(tmp_path, makefile_run(GPUS="0 1"), jobs=6, parallel=4, together=2)
    assert {gpu for gpu, *_ in jobs} == {"0", "1"}
    for gpu in ("0", "1"):
        assert most_at_once([(start, end) for g, start, end, _ in jobs if g == gpu]) == 1
    assert most_at_once([(start, end) for _, start, end, _ in jobs]) == 2  # both GPUs busy at once
    assert {preallocate for *_, preallocate in jobs} == {"unset"}  # one job per GPU: JAX's default


def test_several_slots_per_gpu_share_it_without_preallocating(tmp_path):
    jobs = record_jobs(tmp_path, makefile_run(GPUS="0 1", SLOTS_PER_GPU=2), jobs=4, parallel=4, together=4)
    for gpu in ("0", "1"):
        assert most_at_once([(start, end) for g, start, end, _ in jobs if g == gpu]) == 2
    assert {preallocate for *_, preallocate in jobs} == {"false"}


def test_srun_steps_inside_a_slurm_allocation_get_a_gpu_each(tmp_path):
    """RUN="srun --exclusive -n1 --gres=gpu:1" in a two-GPU allocation: Slurm is the slot wrapper."""
    from test_launch import slurm_environment

    jobs = record_jobs(tmp_path, "srun --exclusive -n1 --gres=gpu:1", jobs=4, parallel=2, together=2,
                       before=["salloc", "-n2", "--gres=gpu:2"], environment=slurm_environment())
    assert {gpu for gpu, *_ in jobs} == {"0", "1"}
    for gpu in ("0", "1"):
        assert most_at_once([(start, end) for g, start, end, _ in jobs if g == gpu]) == 1


def held(path: Path) -> bool:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_a_killed_job_frees_its_gpu_and_a_waiting_one_takes_it(tmp_path, lock_folder):
    slot = [sys.executable, "-m", "replication", "slot", "--gpus", "0", "--"]
    first = subprocess.Popen([*slot, "sleep", "60"], cwd=ROOT, stderr=subprocess.DEVNULL)
    lock = lock_folder / "gpu-0-0.lock"
    deadline = time.time() + 30
    while not (lock.exists() and held(lock)):
        assert time.time() < deadline and first.poll() is None, "the first job never took its slot"
        time.sleep(0.1)
    second = subprocess.Popen([*slot, "sh", "-c", "echo $CUDA_VISIBLE_DEVICES > taken"], cwd=tmp_path,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    time.sleep(1.5)
    assert second.poll() is None and not (tmp_path / "taken").exists()  # waits while GPU 0 is held
    os.kill(first.pid, signal.SIGKILL)  # the exec'd command itself holds the lock: no cleanup runs
    first.wait()
    assert second.wait(timeout=30) == 0
    assert (tmp_path / "taken").read_text().strip() == "0"


@pytest.mark.parametrize("gpus, command, problem", [
    ("", ["true"], "no GPU ids given"),
    ("0 1 0", ["true"], "name a GPU twice"),
    ("0 1", [], "no command given"),
    ("0", ["no-such-program-here"], "cannot run 'no-such-program-here'"),
])
def test_bad_slot_arguments_are_one_line(gpus, command, problem):
    result = cli("slot", "--gpus", gpus, "--", *command)
    assert problem in one_error_line(result.returncode, result.stderr)


def test_tiny_profile_under_make_j_with_two_gpus(tmp_path):
    """The real recipes of a two-run profile (pipeline.rules) under `make -j2` with GPUS="0 1":
    every result is made and the two trainings, started together, got different GPUs."""
    config = tmp_path / "tiny.yaml"
    data = yaml.safe_load((ROOT / "tests" / "tiny-profile.yaml").read_text())
    config.write_text(yaml.safe_dump({**data, "results_dir": str(tmp_path / "results")}))
    rules = pipeline.rules("tiny", [str(config)])
    (tmp_path / "rules.mk").write_text(rules)
    done = subprocess.run(["make", "-j2", "--no-print-directory", "-f", str(tmp_path / "rules.mk"),
                           f"PY={sys.executable}", f"RUN={makefile_run(GPUS='0 1')}", "tiny-all"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed, phony = launch.parse_rules(rules)
    missing = [target for target in parsed if target not in phony and target != "tiny-all"
               and not Path(target).exists()]
    assert not missing
    # Two jobs' stderr may interleave within a line: find the wrapper's lines anywhere.
    trainings = re.findall(r"\[slot\] GPU (\S+) \(slot 1 of 1\): \S+ -m replication train ", done.stderr)
    assert sorted(trainings) == ["0", "1"], done.stderr[-3000:]
