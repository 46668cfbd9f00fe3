"""/ws/chat: what one client says, every chat client receives."""

import json
import time

import pytest

from .conftest import bearer_token, log_in, open_socket

EXPECTED = 'expected a JSON object like {"text": "hello"}'


def join(ws, name: str) -> None:
    """Wait until the hub has subscribed this socket.

    The 101 reaches the client a moment before the handler subscribes; a
    client hears its own message only once subscribed.
    """
    ws.send(json.dumps({"text": f"{name} joined"}))
    while json.loads(ws.recv(timeout=5))["text"] != f"{name} joined":
        pass


def drain(ws) -> None:
    while True:
        try:
            ws.recv(timeout=0.2)
        except TimeoutError:
            return


def test_message_reaches_every_chat_client(server, alice, bob):
    browser = log_in(server, bob)
    with (
        open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as alice_ws,
        open_socket(server, "/ws/chat", browser=browser) as bob_ws,
    ):
        join(alice_ws, "alice")
        join(bob_ws, "bob")
        drain(alice_ws)
        before = time.time()
        alice_ws.send(json.dumps({"text": "  hi bob  "}))
        for ws in (bob_ws, alice_ws):
            received = json.loads(ws.recv(timeout=5))
            ts = received.pop("ts")
            assert received == {"type": "message", "user": alice, "text": "hi bob"}
            assert before - 1 <= ts <= time.time() + 1


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        ("hello", f"not JSON; {EXPECTED}"),
        ('["text"]', EXPECTED),
        ('{"text": 5}', EXPECTED),
        ('{"text": "   "}', "text is empty"),
        (b"\x00binary", f"binary messages are not accepted; {EXPECTED}"),
    ],
)
def test_malformed_message_gets_an_error_and_the_socket_stays_open(
    server, alice, sent, error
):
    with open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as ws:
        ws.send(sent)
        assert json.loads(ws.recv(timeout=5)) == {"type": "error", "error": error}
        ws.send(json.dumps({"text": "still here"}))
        assert json.loads(ws.recv(timeout=5))["text"] == "still here"
