"""A worker admits only the sockets it can hold and keeps room for HTTP."""

import time
from contextlib import ExitStack

import pytest
import requests
from websockets.exceptions import InvalidStatus

from .conftest import (
    SMALL_WORKER,
    SMALL_WORKER_SOCKETS,
    bearer_token,
    open_socket,
    wait_until,
)


def test_handshake_over_capacity_gets_503_at_once_while_healthz_answers(
    start_server, alice
):
    server = start_server(**SMALL_WORKER)
    token = bearer_token(server, alice)
    with ExitStack() as stack:
        for _ in range(SMALL_WORKER_SOCKETS):
            stack.enter_context(open_socket(server, "/ws/echo", token=token))

        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refusal:
            open_socket(server, "/ws/echo", token=token)
        assert time.monotonic() - started < 2
        assert refusal.value.response.status_code == 503
        assert refusal.value.response.headers["Retry-After"] == "5"

        health = requests.get(f"{server.url}/healthz", timeout=2)
        assert health.status_code == 200

    # The slots are given back when the sockets close.
    def room_again() -> bool:
        try:
            with open_socket(server, "/ws/echo", token=token) as ws:
                ws.send("room again")
                assert ws.recv(timeout=5) == "room again"
            return True
        except InvalidStatus:
            return False

    wait_until(room_again, 5, "the slots given back")
