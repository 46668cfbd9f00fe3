"""A worker admits only the sockets it can hold and keeps room for HTTP."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import requests
from websockets.exceptions import InvalidStatus

from .conftest import (
    SMALL_WORKER,
    SMALL_WORKER_SOCKETS,
    bearer_token,
    echoes,
    open_socket,
    wait_until,
    workers,
)
from .handshake_stall import HANDSHAKES_AT_ONCE

STALLING_APP = "tests.handshake_stall:create_stalling_app()"


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


def test_a_worker_takes_on_so_many_handshakes_at_once_and_refuses_the_next(
    start_server, alice, tmp_path
):
    """Handshakes under way count until their socket opens or they are
    refused; past HANDSHAKES_AT_ONCE the next gets 503 at once, and what each
    handshake counted comes back whichever way it ended."""
    stall = tmp_path / "stall"
    server = start_server(app=STALLING_APP, STALL_FILE=str(stall), **workers(1, 8))
    token = bearer_token(server, alice)
    opened = f"/ws/echo opened by {alice}"

    def refused_while_stalled() -> list:
        """Fill the handshakes under way with stalled ones, check that the
        next is refused, then let them through: their sockets."""
        stall.touch()
        before = server.log().count(opened)
        with ThreadPoolExecutor(HANDSHAKES_AT_ONCE) as pool:
            waiting = [
                pool.submit(
                    open_socket, server, "/ws/echo", token=token, open_timeout=60
                )
                for _ in range(HANDSHAKES_AT_ONCE)
            ]
            wait_until(
                lambda: server.log().count(opened) == before + HANDSHAKES_AT_ONCE,
                30,
                "the handshakes under way",
            )
            with pytest.raises(InvalidStatus) as refused:
                open_socket(server, "/ws/echo", token=token)
            # The handshakes under way hold up no one's HTTP.
            health = requests.get(f"{server.url}/healthz", timeout=10)
            assert health.status_code == 200
            stall.unlink()
            sockets = [handshake.result(timeout=60) for handshake in waiting]
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert json.loads(response.body) == {
            "error": "too many WebSockets opening at once; retry later"
        }
        return sockets

    for ws in refused_while_stalled():
        with ws:
            assert echoes(ws)
    # Handshakes that end otherwise: refused before the socket (no login),
    # and opened then closed at once.
    for _ in range(3):
        with pytest.raises(InvalidStatus) as unauthenticated:
            open_socket(server, "/ws/echo")
        assert unauthenticated.value.response.status_code == 401
        with open_socket(server, "/ws/echo", token=token) as ws:
            assert echoes(ws)
    # None of them, nor the refusal, left a count behind: exactly as many
    # handshakes as before are taken on again.
    for ws in refused_while_stalled():
        with ws:
            assert echoes(ws)
