"""Process groups inside a worker, and two ways to start the workers (``sec-parallel-launch``).

A worker is one process of a job: torchrun (or :func:`run_workers`) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment, and :func:`process_group` joins it to
the others with a timeout, so that a worker whose peer died raises instead of waiting forever, and always
leaves the group. Gloo runs on CPUs, NCCL on GPUs (one per process, so only where every local rank has one).

:func:`torchrun` starts ``torchrun --nproc-per-node N -m effdl.parallel ...`` as a subprocess in a session of its
own: its workers meet at 127.0.0.1 on a free port (torch's rendezvous store itself listens on that port of every
interface) and their gloo (or NCCL) sockets bind the loopback interface (``GLOO_SOCKET_IFNAME=lo``). If the job outlives
``timeout_s``, torchrun gets SIGTERM, which it forwards to its workers (each in a session of its own) before it
exits; whatever is left of torchrun's session after a grace period, and every process it had started, is killed.
:func:`run_workers` does the same from Python for any picklable function (the tests use it).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from effdl.serve.launch import HOST, free_port

GROUP_TIMEOUT_S = 120.0  # how long a collective waits for a missing peer before it raises
EXIT_GRACE_S = 10.0  # how long a worker that returned may take to leave its group before it is killed
STOP_GRACE_S = 10.0  # how long torchrun may take to stop its workers after SIGTERM before all are killed
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}  # the workers' sockets bind 127.0.0.1


def backend() -> str:
    """NCCL where this machine has a GPU for every local rank (``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``), gloo
    otherwise (with 2 workers and 1 GPU, rank 1 would have no GPU of its own)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= local else "gloo"


def worker_device() -> torch.device:
    """This worker's device: GPU ``LOCAL_RANK`` under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(timeout_s: float = GROUP_TIMEOUT_S, name: str | None = None) -> Iterator[None]:
    """Join the job described by the environment (torchrun's variables) with backend ``name`` (default
    :func:`backend`) and a ``timeout_s`` on every collective; always destroy the group on exit."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    name = name or backend()
    if name == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(name, timeout=timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


# --- starting workers -------------------------------------------------------------------------------------------


def torchrun_command(args: Sequence[str], nproc: int = 2, port: int | None = None, nnodes: int = 1,
                     node_rank: int | None = None) -> list[str]:  # fmt: skip
    """``torchrun --nproc-per-node NPROC ... -m effdl.parallel ARGS`` with a c10d rendezvous on 127.0.0.1:PORT
    (``--nnodes`` and ``--node-rank`` for one launcher of a multi-node job)."""
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc and nnodes must be >= 1, got nproc={nproc}, nnodes={nnodes}")
    port = port or free_port()
    node = [] if node_rank is None else ["--node-rank", str(node_rank)]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
            *node, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{HOST}:{port}", "--rdzv-id", str(port),
            "--max-restarts", "0", "-m", "effdl.parallel", *args]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, grandchildren, ...) now, from Linux ``/proc`` (none without it)."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as stat:
            parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _stop(process: subprocess.Popen) -> None:
    """Stop ``process`` (torchrun) and everything it started, then reap it: SIGTERM first, which torchrun forwards
    to its workers (in sessions of their own) before it exits; after :data:`STOP_GRACE_S`, SIGKILL to whatever is
    left of its session and of the processes it had started when it was asked to stop."""
    started = _descendants(process.pid) if process.poll() is None else []
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


def run_commands(commands: Sequence[Sequence[str]], timeout_s: float, threads: int | None = 1,
                 env: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """Run ``commands`` at once (each in a session of its own), wait at most ``timeout_s`` for all of them, and
    return their outputs; raise ``RuntimeError`` with the output if one fails or the time runs out. Each is
    stopped on the way out, however it ends, with every process it started (see :func:`_stop`). The workers'
    sockets bind the loopback interface (:data:`LOOPBACK`, unless ``env`` says otherwise); ``threads`` sets
    ``OMP_NUM_THREADS`` (torch's intra-op threads) of each worker; ``None`` leaves the variable as it is."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    env = os.environ | LOOPBACK | (env or {}) | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    processes: list[subprocess.Popen] = []
    try:
        for command in commands:
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              stdin=subprocess.DEVNULL, env=env, start_new_session=True))  # fmt: skip
        deadline = time.monotonic() + timeout_s
        outputs = [p.communicate(timeout=max(deadline - time.monotonic(), 0.1))[0] for p in processes]
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{commands[0][-4:]} did not finish within {timeout_s} s") from err
    finally:
        for process in processes:
            _stop(process)
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode:
            raise RuntimeError(f"exit status {process.returncode} of {process.args}:\n{output[-3000:]}")
    return outputs


def torchrun(args: Sequence[str], nproc: int = 2, timeout_s: float = 300, threads: int | None = 1,
             env: dict[str, str] | None = None) -> str:  # fmt: skip
    """Run ``torchrun --nproc-per-node NPROC -m effdl.parallel ARGS`` on one "node" and return its output."""
    return run_commands([torchrun_command(args, nproc)], timeout_s, threads, env)[0]


def torchrun_nodes(args: Sequence[str], nnodes: int = 2, nproc: int = 1, timeout_s: float = 300) -> list[str]:
    """The same job as ``nnodes`` launchers, one per "node", meeting at one rendezvous endpoint on 127.0.0.1:
    what runs on several machines, with the endpoint the first machine's address."""
    port = free_port()
    return run_commands([torchrun_command(args, nproc, port, nnodes, node) for node in range(nnodes)], timeout_s)


def _worker(fn: Callable[..., Any], rank: int, nproc: int, port: int, timeout_s: float, results: Any,
            pickled: bytes) -> None:  # fmt: skip
    """Rank ``rank`` of :func:`run_workers`: join the gloo group (its sockets on the loopback interface), run
    ``fn`` and put ``(rank, value, traceback or None)`` on ``results``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                      MASTER_ADDR=HOST, MASTER_PORT=str(port), **LOOPBACK)  # fmt: skip
    torch.set_num_threads(1)
    try:
        with process_group(timeout_s, "gloo"):
            results.put((rank, fn(**pickle.loads(pickled)), None))
    except Exception:  # the parent re-raises it with the traceback
        results.put((rank, None, traceback.format_exc()))


def run_workers(fn: Callable[..., Any], nproc: int = 2, timeout_s: float = 120, **kwargs: Any) -> list[Any]:
    """``fn(**kwargs)`` on ``nproc`` spawned processes joined in a gloo group (meeting at 127.0.0.1 on a free port,
    its sockets on the loopback interface; one
    intra-op thread each, their own copy of ``kwargs`` each); the list of their return values by rank (return
    plain numbers and lists: they cross a queue). Raises ``RuntimeError`` if a worker raises or the job outlives
    ``timeout_s``; every worker is killed on the way out."""
    if nproc < 1 or timeout_s <= 0:
        raise ValueError(f"nproc must be >= 1 and timeout_s positive, got nproc={nproc}, timeout_s={timeout_s}")
    pickled = pickle.dumps(kwargs)  # copies: torch.multiprocessing would share tensors among the workers
    context = mp.get_context("spawn")
    results, port = context.Queue(), free_port()
    workers = [context.Process(target=_worker, args=(fn, r, nproc, port, timeout_s, results, pickled), daemon=True)
               for r in range(nproc)]  # fmt: skip
    deadline, returned = time.monotonic() + timeout_s, {}
    try:
        for worker in workers:
            worker.start()
        while len(returned) < nproc:
            try:
                r, value, error = results.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty as err:
                raise RuntimeError(f"{fn.__name__} did not finish on {nproc} processes within {timeout_s} s") from err
            if error:
                raise RuntimeError(f"rank {r} of {fn.__name__} raised:\n{error}")
            returned[r] = value
        return [returned[r] for r in range(nproc)]
    finally:
        for worker in workers:  # all returned: give each a moment to leave its group; otherwise kill it now
            worker.join(EXIT_GRACE_S if len(returned) == nproc else 0)
            if worker.is_alive():
                worker.kill()
                worker.join()
