"""broadcast = redis: chat reaches every worker and every instance, and a
Redis outage degrades the service instead of taking it down."""

import json
import re
import time
from contextlib import ExitStack

import redis
import requests

from {{ cookiecutter.package_name }}.realtime.redis_hub import CHANNEL

from .conftest import bearer_token, join_chat, open_socket

NOT_SENT = {"type": "error", "error": "broadcast unavailable; the message was not sent"}


WORKERS = 2


def subscribers(redis_server) -> int:
    """How many workers listen on the chat channel of this Redis."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        [(_channel, count)] = client.pubsub_numsub(CHANNEL)
    finally:
        client.close()
    return count


def worker_pids(server) -> set[str]:
    """The gunicorn workers that have let a chat socket in so far."""
    return set(
        re.findall(r"\[(\d+)\] \[INFO\] WebSocket /ws/chat opened", server.log())
    )


def say(ws, text: str) -> None:
    ws.send(json.dumps({"text": text}))


def heard(ws) -> dict:
    message = json.loads(ws.recv(timeout=5))
    message.pop("ts", None)
    return message


def eventually(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.2)


def test_chat_reaches_clients_on_every_worker_and_instance(start_server, alice):
    first = start_server(WEB_CONCURRENCY="2")
    second = start_server(WEB_CONCURRENCY="2")
    token = bearer_token(first, alice)
    with ExitStack() as stack:
        clients = []
        # Open sockets on the first instance until two workers hold some.
        while len(worker_pids(first)) < 2:
            assert len(clients) < 30, "every socket landed on one worker"
            ws = stack.enter_context(open_socket(first, "/ws/chat", token=token))
            clients.append(ws)
            time.sleep(0.05)
        clients += [
            stack.enter_context(open_socket(second, "/ws/chat", token=token))
            for _ in range(2)
        ]
        join_chat(*clients)

        for number in range(3):
            say(clients[-1], f"message {number}")
            for ws in clients:
                assert heard(ws) == {
                    "type": "message",
                    "user": alice,
                    "text": f"message {number}",
                }


{%- if cookiecutter.use_docker == "y" %}


def test_chat_reaches_two_instances_behind_one_nginx(start_server, start_nginx, alice):
    instances = [
        start_server(WEB_CONCURRENCY="2", TRUSTED_PROXY_COUNT="1") for _ in range(2)
    ]
    proxy = start_nginx(*instances)
    token = bearer_token(proxy, alice)
    with ExitStack() as stack:
        clients = []
        # nginx sends each new socket to the least busy instance; keep opening
        # until every worker of both instances holds one.
        while any(len(worker_pids(instance)) < 2 for instance in instances):
            assert len(clients) < 40, "nginx did not spread the sockets"
            ws = stack.enter_context(open_socket(proxy, "/ws/chat", token=token))
            clients.append(ws)
        join_chat(*clients)

        for number, speaker in enumerate((clients[0], clients[-1])):
            say(speaker, f"through nginx {number}")
            for ws in clients:
                assert heard(ws) == {
                    "type": "message",
                    "user": alice,
                    "text": f"through nginx {number}",
                }
{%- endif %}


def test_redis_outage_degrades_then_recovers(start_server, start_redis, alice):
    redis_server = start_redis()
    server = start_server(REDIS_URL=redis_server.url, WEB_CONCURRENCY=str(WORKERS))
    token = bearer_token(server, alice)
    with (
        open_socket(server, "/ws/chat", token=token) as sender,
        open_socket(server, "/ws/chat", token=token) as listener,
    ):
        join_chat(sender, listener)
        say(sender, "before")
        assert heard(listener)["text"] == "before"
        assert heard(sender)["text"] == "before"

        redis_server.stop()
        eventually(lambda: requests.get(f"{server.url}/readyz").status_code == 503)
        assert requests.get(f"{server.url}/readyz").json()["checks"] == {
            "database": "ok",
            "broadcast": "unavailable",
        }
        assert requests.get(f"{server.url}/healthz").status_code == 200
        say(sender, "during")
        assert heard(sender) == NOT_SENT

        restarted = start_redis(port=redis_server.port)
        # Each worker resubscribes on its own backoff; until then it misses
        # what is published (Redis pub/sub keeps nothing for absent listeners).
        eventually(lambda: subscribers(restarted) == WORKERS)
        assert requests.get(f"{server.url}/readyz").status_code == 200
        say(sender, "after")
        # "during" was refused, never delivered: the next thing heard is "after".
        assert heard(listener)["text"] == "after"
        assert heard(sender)["text"] == "after"
