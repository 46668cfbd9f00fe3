"""Stopping the server closes every socket with 1001, so clients reconnect."""

import signal
import time
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed

from .conftest import bearer_token, open_socket


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
        assert server.process.wait(timeout=10) == 0
        # Well within graceful_timeout (30 s): nobody waited for it.
        assert time.monotonic() - started < 10
