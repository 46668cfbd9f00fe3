"""Whatever ends a socket gives its slot back: after any number of abnormal
ends, the worker admits exactly as many sockets as before them."""

import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
from websockets.exceptions import InvalidStatus

from .conftest import (
    SMALL_WORKER,
    SMALL_WORKER_SOCKETS,
    RawWebSocket,
    bearer_token,
    echoes,
    open_socket,
    wait_until,
)
from .test_session import APP

MAX_MESSAGE_SIZE = 65536  # WS_MAX_MESSAGE_SIZE's default
REPEATS = 60


@pytest.fixture(scope="module")
def small_server(start_server):
    # The app with a handler that fails (tests/session_writer.py); pings every
    # second, so a client that never answers them is found in two.
    return start_server(app=APP, WS_PING_INTERVAL="1", **SMALL_WORKER)


@pytest.fixture(scope="module")
def token(small_server, alice):
    return bearer_token(small_server, alice)


def open_when_room(server, token: str, path: str = "/ws/echo") -> RawWebSocket:
    """A socket as soon as the worker has room: the last socket's slot comes
    back a moment after its client saw it close."""

    def attempt():
        raw = RawWebSocket(server, path, token)
        if raw.status == 101:
            return raw
        assert raw.status == 503, raw.status
        raw.close()
        return None

    return wait_until(attempt, 10, "a slot came back")


def assert_capacity_is_whole(server, token: str) -> None:
    """The worker admits exactly its capacity again, then answers 503."""
    held = [open_when_room(server, token) for _ in range(SMALL_WORKER_SOCKETS)]
    for raw in held:
        raw.send_frame(RawWebSocket.TEXT, b"still echoing")
        assert raw.recv_data_frame() == (RawWebSocket.TEXT, b"still echoing")
    one_more = RawWebSocket(server, "/ws/echo", token)
    assert one_more.status == 503
    for raw in [*held, one_more]:
        raw.close()


def oversize_message(raw: RawWebSocket) -> int:
    raw.send_frame(RawWebSocket.TEXT, b"x" * (MAX_MESSAGE_SIZE + 1))
    return raw.messages_until_close()[1]


def unmasked_frame(raw: RawWebSocket) -> int:
    raw.send_frame(RawWebSocket.TEXT, b"hello", masked=False)
    return raw.messages_until_close()[1]


def invalid_utf8(raw: RawWebSocket) -> int:
    raw.send_frame(RawWebSocket.TEXT, b"\xff\xfe")
    return raw.messages_until_close()[1]


def vanish_mid_frame(raw: RawWebSocket) -> None:
    # A frame header that promises 1,000 bytes, 10 of them, then FIN.
    raw.sock.sendall(struct.pack("!BBH", 0x81, 0x80 | 126, 1000) + bytes(14))
    raw.close()


def vanish_with_reset(raw: RawWebSocket) -> None:
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


@pytest.mark.parametrize(
    ("end", "code"),
    [
        (oversize_message, 1009),
        (unmasked_frame, 1002),
        (invalid_utf8, 1007),
        (vanish_mid_frame, None),
        (vanish_with_reset, None),
    ],
)
def test_sockets_that_end_abnormally_give_their_slots_back(
    small_server, token, end, code
):
    for _ in range(REPEATS):
        raw = open_when_room(small_server, token)
        assert end(raw) == code
        raw.close()
    assert_capacity_is_whole(small_server, token)


def test_a_failing_handler_gives_its_slot_back(small_server, token):
    for _ in range(REPEATS):
        raw = open_when_room(small_server, token, "/ws/session-writer")
        assert raw.messages_until_close() == ([b"visits before: 0"], 1011)
        raw.close()
    assert_capacity_is_whole(small_server, token)


def test_clients_that_never_answer_pings_give_their_slots_back(small_server, token):
    for _ in range(2):
        silent = [
            open_when_room(small_server, token) for _ in range(SMALL_WORKER_SOCKETS)
        ]
        # They read, but never answer a ping: the server gives up on them.
        with ThreadPoolExecutor(len(silent)) as readers:
            ends = list(readers.map(RawWebSocket.messages_until_close, silent))
        assert ends == [([], 1008)] * SMALL_WORKER_SOCKETS
        for raw in silent:
            raw.close()
    assert_capacity_is_whole(small_server, token)


def test_only_the_client_that_never_answers_pings_is_closed(small_server, token):
    """Pings reach every socket, and a 1008 is the silent client's own: beside
    two silent clients in turn (two ping intervals at least), a client that
    answers pings (as `websockets` does) stays open and echoes."""

    def answering_client():
        try:
            return open_socket(small_server, "/ws/echo", token=token)
        except InvalidStatus as refused:
            assert refused.response.status_code == 503
            return None

    with wait_until(answering_client, 10, "a slot came back") as answering:
        for _ in range(2):
            silent = open_when_room(small_server, token)
            assert silent.messages_until_close() == ([], 1008)
            silent.close()
        assert echoes(answering)
    assert_capacity_is_whole(small_server, token)
