"""/ws/chat: what one client says, every chat client receives."""

import json
import threading
import time
from collections import Counter
from contextlib import ExitStack

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
        (b"\xff\xfe not UTF-8", f"binary messages are not accepted; {EXPECTED}"),
        ("[" * 30_000 + "]" * 30_000, f"not JSON; {EXPECTED}"),
        ('{"a": ' * 8_000 + "1" + "}" * 8_000, f"not JSON; {EXPECTED}"),
        ('{"text": ' + "9" * 5_000 + "}", f"not JSON; {EXPECTED}"),
        ('{"text": "' + "é" * 30_000, f"not JSON; {EXPECTED}"),
        ('\ufeff{"text": "hi"}', f"not JSON; {EXPECTED}"),
        ("null", EXPECTED),
        ('{"text": ["hi"]}', EXPECTED),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_malformed_message_gets_an_error_and_the_socket_stays_open(
    server, alice, sent, error
):
    with open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as ws:
        ws.send(sent)
        assert json.loads(ws.recv(timeout=5)) == {"type": "error", "error": error}
        ws.send(json.dumps({"text": "still here"}))
        assert json.loads(ws.recv(timeout=5))["text"] == "still here"


def test_any_json_string_is_relayed_as_it_was_sent(server, alice):
    with open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as ws:
        ws.send('{"text": "\\ud800 \\u0000 <b>bold</b>"}')
        assert json.loads(ws.recv(timeout=5))["text"] == "\ud800 \x00 <b>bold</b>"


def test_every_frame_arrives_whole_while_deliveries_and_replies_race(server, alice):
    """Three clients flood the chat while the fourth draws error replies from
    its own handler: it gets every message, each frame whole. (A race is rare
    at this size; test_outbox.py pins the one-writer rule itself.)"""
    token = bearer_token(server, alice)
    # Within the burst that WS_MAX_MESSAGES_PER_SECOND (20) lets a socket send
    # at once, after the message that joins the chat.
    per_sender = 15
    with ExitStack() as stack:
        # The senders never read what comes back: with no queue limit their
        # client keeps taking it, and their close is answered at once.
        clients = [
            stack.enter_context(
                open_socket(server, "/ws/chat", token=token, max_queue=None)
            )
            for _ in range(4)
        ]
        join_chat(*clients)
        receiver, senders = clients[0], clients[1:]

        def flood(ws, number):
            for count in range(per_sender):
                ws.send(json.dumps({"text": f"sender {number} message {count}"}))

        threads = [
            threading.Thread(target=flood, args=(ws, number))
            for number, ws in enumerate(senders)
        ]
        for thread in threads:
            thread.start()
        for _ in range(per_sender):
            receiver.send("not json")
        for thread in threads:
            thread.join()

        kinds = Counter()
        while sum(kinds.values()) < per_sender * (len(senders) + 1):
            kinds[json.loads(receiver.recv(timeout=10))["type"]] += 1
        assert kinds == {"message": per_sender * len(senders), "error": per_sender}


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
