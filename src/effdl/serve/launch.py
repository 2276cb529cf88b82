"""Start servers as subprocesses on free ports of 127.0.0.1, and always stop them (``sec-serve-api``).

A notebook or a test that talks to a server over HTTP should run it in a process of its own, as it will run in
production: :func:`serving` starts ``python -m effdl.serve`` (or any ASGI app under uvicorn, with ``module``)
on a free port, waits at most ``startup_s`` for ``GET /health`` to answer 200, yields a :class:`Server` (its
base URL and process), and on exit, however the block ends, asks it to stop (SIGTERM: uvicorn finishes the
requests it accepted) and kills it if it has not stopped within ``stop_s``. :func:`serving_many` starts several
at once, so that their start-ups overlap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that no one listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Server:
    """A server process: its base URL (``http://127.0.0.1:PORT``), the process and the file it logs to."""

    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """The process's resident memory now (``VmRSS`` of ``/proc/<pid>/status``; Linux only)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def cpu_seconds(self) -> float:
        """CPU seconds the process has used so far, user and system, all its threads (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, startup_s: float) -> None:
        """Poll ``GET /health`` until it answers 200; ``RuntimeError`` with the log's tail if the process exits
        or ``startup_s`` pass first."""
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the server did not answer /health within {startup_s} s:\n{self.log_tail()}")

    def stop(self, stop_s: float) -> int:
        """SIGTERM, then SIGKILL after ``stop_s``; the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(stop_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def command(args: Sequence[str], port: int, module: str = "effdl.serve") -> list[str]:
    """The command line of a server on ``port``: ``python -m effdl.serve ARGS --port PORT`` (``--host`` is
    127.0.0.1 by default), or with ``module="uvicorn"`` an app that ``args`` names (``"pkg.mod:factory",
    "--factory"``)."""
    host = ["--host", HOST] if module == "uvicorn" else []
    return [sys.executable, "-m", module, *args, *host, "--port", str(port)]


@contextlib.contextmanager
def serving_many(arg_lists: Sequence[Sequence[str]], module: str = "effdl.serve", startup_s: float = 120.0,
                 stop_s: float = 10.0, threads: int | None = None) -> Iterator[list[Server]]:  # fmt: skip
    """One server per item of ``arg_lists``, started together; each process's intra-op threads (OpenMP's, the
    pool torch uses) set to ``threads`` if given. Stopped on exit, even if one fails to start."""
    env = os.environ | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="effdl-serve-") as logs, contextlib.ExitStack() as stack:
        for i, args in enumerate(arg_lists):
            log = Path(logs) / f"server-{i}.log"
            port = free_port()
            with log.open("wb") as out:
                process = subprocess.Popen(command(args, port, module), stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env)  # fmt: skip
            server = Server(f"http://{HOST}:{port}", process, log)
            stack.callback(server.stop, stop_s)
            servers.append(server)
        for server in servers:
            server.wait_ready(startup_s)
        yield servers


@contextlib.contextmanager
def serving(*args: str, module: str = "effdl.serve", startup_s: float = 120.0, stop_s: float = 10.0,
            threads: int | None = None) -> Iterator[Server]:  # fmt: skip
    """One server, ``python -m effdl.serve ARGS`` on a free port (see :func:`serving_many`): ``with
    serving("--model", "none") as server: httpx.get(server.url + "/health")``."""
    with serving_many([args], module, startup_s, stop_s, threads) as (server,):
        yield server
