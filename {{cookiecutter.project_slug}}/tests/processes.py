"""Waiting and processes, for every test module and tests/nginx.py: a free
port, one held for gunicorn, polling until a condition holds, stopping a
process.

It imports nothing of the tests, so tests/nginx.py can use it when the
template's own tests load that file without conftest.
"""

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` ports of 127.0.0.1 that nothing listens on at the moment, all
    different: each probe stays bound until the last is, or a port could be
    handed out twice."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


@contextmanager
def reserved_port() -> Iterator[int]:
    """A free port, held for a server that listens with SO_REUSEPORT, as
    gunicorn does here (gunicorn.conf.py), until the block ends.

    Between `free_port` and a server's own bind, another process (a test
    suite running beside this one) may be handed the same port. Most servers
    would then fail with "Address already in use"; two gunicorns would both
    listen on it, and the kernel would give each some of the other's
    connections. This probe sets SO_REUSEPORT too and stays bound without
    listening: gunicorn binds beside it, no other process is handed the port
    (the kernel never picks a port in use for a bind to port 0), and a socket
    that does not listen takes no connection."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", 0))
        yield probe.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, every: float = 0.05
):
    """Poll `condition` until it is true (and return it), or fail after
    `timeout` seconds saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(every)
    return result


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, as a process manager would; SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_started(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    timeout: float,
    log: Callable[[], str] = str,
) -> None:
    """Wait until the just started `process` is `ready()`. Fail with its `log()`
    when it exits first, or when it is not ready within `timeout` seconds
    (then it is stopped, so that no failed start outlives the test)."""
    name = process.args[0]
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"{name} exited:\n{log()}")
        if time.monotonic() > deadline:
            stop_process(process, timeout=10)
            pytest.fail(f"{name} was not ready in {timeout} s:\n{log()}")
        time.sleep(0.05)
