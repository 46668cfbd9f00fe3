"""Stopping or reloading the server closes every socket with 1001, so clients
reconnect, and the workers leave no error behind (either worker class)."""

import os
import signal
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import (
    BIN,
    PROJECT_ROOT,
    SMALL_WORKER,
    RawWebSocket,
    bearer_token,
    clean_environ,
    echoes,
    open_socket,
    wait_until,
)
from .processes import reserved_port, stop_process

GRACEFUL_TIMEOUT = 30  # gunicorn.conf.py
# What gunicorn's log says when a worker fails on its way out, or is killed
# because it did not leave in time.
SIGNS_OF_TROUBLE = (
    "Traceback",
    "Exception in worker process",
    "exited with code",
    "SIGKILL",
)


def open_sockets(stack: ExitStack, server, token: str) -> list:
    return [
        stack.enter_context(open_socket(server, path, token=token))
        for path in ("/ws/echo", "/ws/echo", "/ws/chat")
    ]


def assert_closed_with_1001_at_once(sockets: list) -> None:
    started = time.monotonic()
    for ws in sockets:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1001
        assert closed.value.rcvd.reason == "server shutting down"
    # At once, not after graceful_timeout (30 s).
    assert time.monotonic() - started < 10


def assert_no_trouble(log: str) -> None:
    found = [sign for sign in SIGNS_OF_TROUBLE if sign in log]
    assert not found, log


def test_sigterm_closes_every_open_socket_with_1001(start_server, alice):
    server = start_server()
    token = bearer_token(server, alice)
    with ExitStack() as stack:
        sockets = open_sockets(stack, server, token)
        server.process.send_signal(signal.SIGTERM)
        assert_closed_with_1001_at_once(sockets)
    try:
        exit_code = server.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not stop:\n{server.log()}")
    assert exit_code == 0, server.log()
    assert_no_trouble(server.log())


def test_a_stopping_worker_waits_for_a_slow_answer_to_its_1001(start_server, alice):
    """However many sockets it closed before, a stopping worker waits for the
    closing handshake of those still open (up to the close timeout, 10 s).
    gunicorn's gthread worker counts its connections to know what to wait
    for; the sockets closed earlier once made that count drop below zero, and
    the worker left at once, cutting a slow client's handshake short."""
    server = start_server(**SMALL_WORKER)  # one worker: the same count
    token = bearer_token(server, alice)
    for _ in range(3):
        with open_socket(server, "/ws/echo", token=token) as ws:
            assert echoes(ws)
    slow = RawWebSocket(server, "/ws/echo", token)
    assert slow.status == 101
    # An echo first: the socket's reader is then in its loop. One that starts
    # after the 1001 went out finds the socket closed and ends at once,
    # without waiting for an answer (a socket opened as the worker stops).
    slow.send_frame(RawWebSocket.TEXT, b"reading")
    assert slow.recv_data_frame() == (RawWebSocket.TEXT, b"reading")
    (worker,) = server.worker_pids()
    server.process.send_signal(signal.SIGTERM)
    opcode, payload = slow.recv_data_frame()
    assert (opcode, payload[:2]) == (RawWebSocket.CLOSE, (1001).to_bytes(2, "big"))
    # A slow client: it answers 3 s later, when a worker that did not wait
    # for it would be gone.
    answer_at = time.monotonic() + 3
    while time.monotonic() < answer_at and Path(f"/proc/{worker}").exists():
        time.sleep(0.05)
    assert Path(f"/proc/{worker}").exists(), f"the worker left:\n{server.log()}"
    slow.send_frame(RawWebSocket.CLOSE, payload[:2])
    closing = f"WebSocket /ws/echo of {alice} closed with 1001"
    wait_until(lambda: closing in server.log(), 10, "the socket's closing line")
    slow.close()
    assert server.process.wait(timeout=GRACEFUL_TIMEOUT + 5) == 0, server.log()
    assert_no_trouble(server.log())


def test_sighup_replaces_the_workers_and_closes_their_sockets_with_1001(
    start_server, alice
):
    server = start_server()
    token = bearer_token(server, alice)
    old_workers = set(server.worker_pids())
    with ExitStack() as stack:
        sockets = open_sockets(stack, server, token)
        server.process.send_signal(signal.SIGHUP)
        assert_closed_with_1001_at_once(sockets)

    def replaced() -> bool:
        workers = set(server.worker_pids())
        return len(workers) == len(old_workers) and not workers & old_workers

    wait_until(replaced, GRACEFUL_TIMEOUT, "new workers in place of the old")
    with open_socket(server, "/ws/echo", token=token) as ws:
        ws.send("after the reload")
        assert ws.recv(timeout=10) == "after the reload"
    assert_no_trouble(server.log())


def test_ctrl_c_closes_every_open_socket_with_1001_and_stops_at_once(
    start_server, alice
):
    """Ctrl-C in a terminal sends SIGINT to every process of the group: the
    master and each worker."""
    server = start_server()
    token = bearer_token(server, alice)
    with ExitStack() as stack:
        sockets = open_sockets(stack, server, token)
        for pid in [server.process.pid, *server.worker_pids()]:
            os.kill(pid, signal.SIGINT)
        interrupted = time.monotonic()
        assert_closed_with_1001_at_once(sockets)
        try:
            exit_code = server.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn did not stop:\n{server.log()}")
    # Not after graceful_timeout, when the master kills what is left.
    assert time.monotonic() - interrupted < 10, server.log()
    assert exit_code == 0, server.log()
    assert_no_trouble(server.log())


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_a_stop_while_the_workers_boot_is_not_lost(migrated, tmp_path, how):
    """Until gunicorn gives a worker its own signal handlers, the worker has
    the master's, which would drop the signal: the master would then wait
    graceful_timeout (30 s) before killing it."""
    log = tmp_path / "gunicorn.log"
    with ExitStack() as stack:
        # On the way out, whatever failed: gunicorn stops, then the port it
        # was held for until then goes back (reserved_port).
        port = stack.enter_context(reserved_port())
        output = stack.enter_context(log.open("w"))
        process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"],
            cwd=PROJECT_ROOT,
            env=clean_environ(**migrated, PORT=str(port), WEB_CONCURRENCY="2"),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        stack.callback(stop_process, process, timeout=10)
        # Forked, and loading the app: the moment a deploy may stop it.
        wait_until(
            lambda: log.read_text().count("Booting worker with pid") == 2,
            30,
            "two workers boot",
        )
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        else:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            workers = [int(pid) for pid in children.read_text().split()]
            for pid in [process.pid, *workers]:
                os.kill(pid, signal.SIGINT)
        stopped = time.monotonic()
        exit_code = process.wait(timeout=GRACEFUL_TIMEOUT + 10)
        assert time.monotonic() - stopped < 10, log.read_text()
        assert exit_code == 0, log.read_text()
        assert_no_trouble(log.read_text())
