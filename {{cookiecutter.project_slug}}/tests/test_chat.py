"""/ws/chat: what one client says, every chat client receives."""

import json
import time

import pytest

from .conftest import bearer_token, join_chat, log_in, open_socket

EXPECTED = 'expected a JSON object like {"text": "hello"}'


def test_message_reaches_every_chat_client(server, alice, bob):
    browser = log_in(server, bob)
    with (
        open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as alice_ws,
        open_socket(server, "/ws/chat", browser=browser) as bob_ws,
    ):
        join_chat(alice_ws, bob_ws)
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
{%- if cookiecutter.broadcast == "memory" %}


def test_memory_broadcast_warns_when_several_workers_would_split_the_chat(
    start_server,
):
    server = start_server(WEB_CONCURRENCY="2")
    assert (
        "[WARNING] broadcast = memory with 2 workers: a chat message reaches only "
        "the clients of the worker that received it"
    ) in server.log()
{%- endif %}
