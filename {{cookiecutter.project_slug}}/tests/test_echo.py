"""/ws/echo: every message comes back unchanged, and the size limit holds."""

from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosedError

from .conftest import bearer_token, open_socket

MAX_MESSAGE_SIZE = 65536  # WS_MAX_MESSAGE_SIZE's default


@pytest.fixture
def echo(server, alice):
    with open_socket(server, "/ws/echo", token=bearer_token(server, alice)) as ws:
        yield ws


def test_text_comes_back_as_text(echo):
    echo.send("héllo, wörld ✓")
    assert echo.recv(timeout=5) == "héllo, wörld ✓"


def test_binary_comes_back_as_binary(echo):
    payload = bytes(range(256))
    echo.send(payload)
    assert echo.recv(timeout=5) == payload


def test_message_at_the_limit_is_accepted(echo):
    echo.send(b"x" * MAX_MESSAGE_SIZE)
    assert echo.recv(timeout=5) == b"x" * MAX_MESSAGE_SIZE


def test_oversized_message_closes_with_1009(echo):
    echo.send("x" * (MAX_MESSAGE_SIZE + 1))
    with pytest.raises(ConnectionClosedError) as closed:
        echo.recv(timeout=5)
    assert closed.value.rcvd.code == 1009


def test_open_sockets_do_not_hold_database_connections(server, alice, bob):
    """More sockets than the database pool has connections (5 + 10 overflow)
    stay open while the database still answers. Two users: each may hold 10."""
    tokens = [bearer_token(server, alice), bearer_token(server, bob)]
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(open_socket(server, "/ws/echo", token=token))
            for token in tokens
            for _ in range(10)
        ]
        for number, ws in enumerate(sockets):
            ws.send(f"socket {number}")
        assert [ws.recv(timeout=5) for ws in sockets] == [
            f"socket {number}" for number in range(20)
        ]
        assert bearer_token(server, alice)  # a query still gets a connection
