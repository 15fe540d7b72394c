"""Throwaway redis-server processes for tests: one server, a 3-master cluster, a sentinel.

Each runs from a temp dir on a free 127.0.0.1 port with persistence off, so
tests never touch a Redis already running on the machine. Callers skip when
`redis-server` is not installed (`need_redis`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
HOST = "127.0.0.1"


def need_redis() -> None:
    """Skip the calling test or fixture when the Redis binaries are missing."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (apt-get install redis-server)")


def free_port(*, bus: bool = False, taken: set[int] | None = None) -> int:
    """A port nobody listens on; with `bus`, port + 10000 too (the cluster bus)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port in (taken or ()):
            continue
        if not bus or (port + 10000 < 65536 and _free(port + 10000)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _answers(port: int) -> bool:
    """True when something on `port` answers PING with PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; stop() and start() again keep the same port."""

    def __init__(
        self, workdir: Path, port: int | None = None, options: tuple[str, ...] = ()
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.options = options  # put before ours: a config file must come first
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [REDIS_SERVER, *self.options, "--port", str(self.port), "--bind", HOST]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: _answers(self.port), f"redis-server on port {self.port}", self.process)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """Freeze the process: it accepts connections but never answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


class Cluster:
    """Three masters, no replicas, every slot covered."""

    def __init__(self, workdir: Path) -> None:
        self.nodes: list[RedisServer] = []
        for i in range(3):
            port = free_port(bus=True, taken={n.port for n in self.nodes})
            config = workdir / f"node{i}" / "nodes.conf"
            options = ("--cluster-enabled", "yes", "--cluster-config-file", str(config))
            self.nodes.append(RedisServer(workdir / f"node{i}", port, options))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def start(self) -> None:
        assert REDIS_CLI is not None
        for node in self.nodes:
            node.start()
        addresses = [f"{HOST}:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for node in self.nodes:
            _wait(lambda port=node.port: _cluster_ok(port), f"cluster node {node.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_ok(port: int) -> bool:
    assert REDIS_CLI is not None
    info = subprocess.run(
        [REDIS_CLI, "-h", HOST, "-p", str(port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return "cluster_state:ok" in info


class SentinelSetup:
    """A master and one sentinel watching it as service `name`."""

    def __init__(self, workdir: Path, name: str = "farebox") -> None:
        self.name = name
        self.master = RedisServer(workdir / "master")
        self.port = free_port()
        # A sentinel rewrites its config file, so it must be its own writable file.
        self.config = workdir / "sentinel.conf"
        self.sentinel = RedisServer(
            workdir / "sentinel", self.port, (str(self.config), "--sentinel")
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://{HOST}:{self.port}/{self.name}/0"

    def start(self) -> None:
        self.master.start()
        self.config.write_text(f"sentinel monitor {self.name} {HOST} {self.master.port} 1\n")
        self.sentinel.start()

    def stop(self) -> None:
        self.sentinel.stop()
        self.master.stop()


@contextlib.contextmanager
def running(service: RedisServer | Cluster | SentinelSetup) -> Iterator[None]:
    """Start `service` for the block and stop it however the block ends."""
    try:
        service.start()
        yield
    finally:
        service.stop()


def _wait(
    ready: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    limit: float = 10.0,
) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {limit:g} s")
        time.sleep(0.02)
