"""A GPU of its own for each job of `make -j` on one multi-GPU node (issue 27).

`python -m replication slot --gpus "0 1 2 3" -- CMD ARGS...` takes a free slot, then replaces
itself with CMD under CUDA_VISIBLE_DEVICES=<that GPU>. A slot is an exclusive `flock` on one lock
file per (GPU, slot) in a folder shared by every checkout on the machine; taken non-blocking, first
slot 0 of every GPU, then slot 1, ...; while all are taken it waits. The lock file stays open across
exec, so CMD itself holds the lock and the kernel drops it when CMD ends, however it ends (SIGKILL
included): no stale lock, nothing to clean up.

Several slots per GPU (`--per-gpu N`) share a device between N jobs; each then allocates memory as
it needs it instead of grabbing most of the device (JAX: XLA_PYTHON_CLIENT_PREALLOCATE=false,
TensorFlow: TF_FORCE_GPU_ALLOW_GROWTH=true), or the second job would find no memory left.

Python rather than a shell script around flock(1): flock(1) is util-linux's (not on macOS), and
here the arguments get the package's one-line errors and the behaviour is tested (test_slot.py).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from replication.errors import UserError

LOCK_DIR_VARIABLE = "REPLICATION_GPU_LOCKS"
SHARING = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


class SlotError(UserError, ValueError):
    """Bad arguments to the slot wrapper; the message names the fix."""


def lock_directory() -> Path:
    """$REPLICATION_GPU_LOCKS, else one folder per user in the system's temporary folder: the same
    for every checkout, so two `make -j` in two clones on one node never share a GPU either."""
    default = Path(tempfile.gettempdir()) / f"replication-gpu-slots-{os.getuid()}"
    return Path(os.environ.get(LOCK_DIR_VARIABLE) or default)


def parse_gpus(text: str) -> list[str]:
    """GPU ids as CUDA_VISIBLE_DEVICES names them (indices or UUIDs), separated by spaces or commas."""
    gpus = [gpu for gpu in re.split(r"[\s,]+", text.strip()) if gpu]
    if not gpus:
        raise SlotError("no GPU ids given: set GPUS to the ids of the node's GPUs, e.g. GPUS=\"0 1 2 3\"")
    if bad := [gpu for gpu in gpus if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*", gpu)]:
        raise SlotError(f"GPU id {bad[0]!r} is not an index or UUID: give ids as nvidia-smi -L lists "
                        "them, e.g. GPUS=\"0 1 2 3\"")
    if len(set(gpus)) < len(gpus):
        raise SlotError(f"GPU ids {text!r} name a GPU twice: for several jobs per GPU use "
                        "SLOTS_PER_GPU (--per-gpu) instead")
    return gpus


def acquire(gpus: list[str], per_gpu: int, directory: Path, poll_seconds: float = 0.5) -> tuple[str, int]:
    """Lock a free slot and return (gpu, slot) with the lock's file descriptor left open (and
    inheritable across exec); waits while every slot is taken."""
    if per_gpu < 1:
        raise SlotError(f"--per-gpu {per_gpu}: give 1 (one job per GPU) or more")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SlotError(f"cannot create the lock folder {directory} ({err.strerror}): set "
                        f"{LOCK_DIR_VARIABLE} to a writable folder") from None
    while True:
        for slot in range(per_gpu):
            for gpu in gpus:
                path = directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}-{slot}.lock"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                os.set_inheritable(fd, True)  # the lock goes with the command through exec
                return gpu, slot
        time.sleep(poll_seconds)


def run(gpus_text: str, per_gpu: int, command: list[str]) -> None:
    """Take a slot and exec `command` on its GPU (does not return, unless the exec fails)."""
    if not command:
        raise SlotError("no command given: python -m replication slot --gpus \"0 1\" -- COMMAND ARGS...")
    if shutil.which(command[0]) is None:
        raise SlotError(f"cannot run {command[0]!r}: no such program (give its path, or fix PATH)")
    gpus = parse_gpus(gpus_text)
    gpu, slot = acquire(gpus, per_gpu, lock_directory())
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
    if per_gpu > 1:
        environment = {**SHARING, **environment}  # a user's own setting wins
    print(f"[slot] GPU {gpu} (slot {slot + 1} of {per_gpu}): {' '.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], command, environment)
    except OSError as err:
        raise SlotError(f"cannot run {command[0]!r}: {err.strerror}") from None
