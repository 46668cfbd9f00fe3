"""Stopping the server closes every socket with 1001, so clients reconnect."""

import signal
import subprocess
import time
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import bearer_token, open_socket

GRACEFUL_TIMEOUT = 30  # gunicorn.conf.py


def test_sigterm_closes_every_open_socket_with_1001(start_server, alice):
    server = start_server()
    token = bearer_token(server, alice)
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(open_socket(server, path, token=token))
            for path in ("/ws/echo", "/ws/echo", "/ws/chat")
        ]
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for ws in sockets:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1001
            assert closed.value.rcvd.reason == "server shutting down"
        # At once, not after graceful_timeout (30 s).
        assert time.monotonic() - started < 10
    try:
        exit_code = server.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"gunicorn did not stop:\n{server.log()}")
    assert exit_code == 0, server.log()
