"""broadcast = redis: chat reaches every worker and every instance, a Redis
outage degrades the service instead of taking it down, and a restart of Redis
never delivers a message to some clients only."""

import json
import re
import threading
import time
from collections import Counter
from contextlib import ExitStack

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import bearer_token, join_chat, open_socket, wait_until

NOT_SENT = {"type": "error", "error": "broadcast unavailable; the message was not sent"}


WORKERS = 2
# WS_MAX_SOCKETS_PER_USER's default: it counts a user's sockets on every worker
# and instance, so a test that opens more shares them among several users.
SOCKETS_PER_USER = 10
CHAT_OPENED = re.compile(r"\[(\d+)\] \[INFO\] WebSocket /ws/chat opened")


def worker_pids(server) -> set[str]:
    """The gunicorn workers that have let a chat socket in so far."""
    return set(CHAT_OPENED.findall(server.log()))


def socket_on_every_worker(stack: ExitStack, servers, via, tokens) -> list:
    """Chat sockets opened through `via` (a server, or nginx in front of
    `servers`) until every worker of `servers` holds one: one per worker.

    Which worker accepts a connection is the kernel's choice, and a worker
    still booting takes none, so a socket that lands on a worker already
    covered is closed again and another is tried, until a deadline."""
    kept = []
    deadline = time.monotonic() + 90

    def opened() -> int:
        return sum(len(CHAT_OPENED.findall(server.log())) for server in servers)

    while any(len(worker_pids(server)) < WORKERS for server in servers):
        assert time.monotonic() < deadline, "a worker took no socket in 90 s"
        covered = [worker_pids(server) for server in servers]
        before = opened()
        token = tokens[len(kept) % len(tokens)]
        ws = stack.enter_context(open_socket(via, "/ws/chat", token=token))
        wait_until(lambda: opened() > before, 10, "the socket's line in the log")  # noqa: B023
        if [worker_pids(server) for server in servers] != covered:
            kept.append(ws)
        else:
            ws.close()  # the stack's own close later does nothing
    return kept


def say(ws, text: str) -> None:
    ws.send(json.dumps({"text": text}))


def heard(ws, timeout: float = 5) -> dict:
    message = json.loads(ws.recv(timeout=timeout))
    message.pop("ts", None)
    return message


def test_chat_reaches_clients_on_every_worker_and_instance(start_server, alice, bob):
    first = start_server(WEB_CONCURRENCY="2")
    second = start_server(WEB_CONCURRENCY="2")
    users = [alice, bob]
    tokens = [bearer_token(first, user) for user in users]
    with ExitStack() as stack:
        clients = socket_on_every_worker(stack, [first], first, tokens)
        clients += [
            stack.enter_context(open_socket(second, "/ws/chat", token=token))
            for token in tokens
        ]
        join_chat(*clients)

        for number in range(3):
            say(clients[-1], f"message {number}")
            for ws in clients:
                assert heard(ws) == {
                    "type": "message",
                    "user": users[-1],
                    "text": f"message {number}",
                }


{%- if cookiecutter.use_docker == "y" %}


def test_chat_reaches_two_instances_behind_one_nginx(
    start_server, start_nginx, alice, bob, make_user
):
    instances = [
        start_server(WEB_CONCURRENCY="2", TRUSTED_PROXY_COUNT="1") for _ in range(2)
    ]
    proxy = start_nginx(*instances)
    users = [alice, bob, make_user()]
    tokens = [bearer_token(proxy, user) for user in users]
    with ExitStack() as stack:
        # nginx sends each new socket to the least busy instance.
        clients = socket_on_every_worker(stack, instances, proxy, tokens)
        join_chat(*clients)

        for number, index in enumerate((0, len(clients) - 1)):
            say(clients[index], f"through nginx {number}")
            for ws in clients:
                assert heard(ws) == {
                    "type": "message",
                    "user": users[index % 3],
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
        wait_until(
            lambda: requests.get(f"{server.url}/readyz", timeout=30).status_code == 503,
            30,
            "readyz answering 503",
        )
        assert requests.get(f"{server.url}/readyz", timeout=30).json()["checks"] == {
            "database": "ok",
            "broadcast": "unavailable",
        }
        assert requests.get(f"{server.url}/healthz", timeout=30).status_code == 200
        say(sender, "during")
        assert heard(sender) == NOT_SENT
        # The user's sockets are counted in Redis: no count, no new socket.
        with pytest.raises(InvalidStatus) as refused:
            open_socket(server, "/ws/echo", token=token)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "5"

        start_redis(port=redis_server.port)
        wait_until(
            lambda: requests.get(f"{server.url}/readyz", timeout=30).status_code == 200,
            30,
            "readyz answering 200",
        )
        say(sender, "after")
        # A worker may still be waiting out its reconnect backoff; the stream
        # keeps "after" until it reads again. "during" was refused, never
        # delivered: the next thing heard is "after".
        assert heard(listener, timeout=30)["text"] == "after"
        assert heard(sender, timeout=30)["text"] == "after"
        with open_socket(server, "/ws/echo", token=token) as echo:
            echo.send("counted again")
            assert echo.recv(timeout=5) == "counted again"


class ChatClient:
    """A chat socket, the worker that holds it, and everything it hears,
    collected by a thread of its own so that it can speak meanwhile."""

    def __init__(self, ws, worker: str) -> None:
        self.ws = ws
        self.worker = worker
        self.heard: Counter[str] = Counter()
        self.errors: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start_reading(self) -> None:
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                message = json.loads(self.ws.recv())
                with self.changed:
                    if message["type"] == "error":
                        self.errors.append(message["error"])
                    else:
                        self.heard[message["text"]] += 1
                    self.changed.notify_all()
        except ConnectionClosed as closed:
            with self.changed:
                self.closed = closed
                self.changed.notify_all()

    def tell(self, text: str, timeout: float = 30) -> str | None:
        """Send `text`; the error it drew, or None once it came back here.

        The handler answers a message it refuses before it reads the next
        one, and a client hears its own message once it is sent, so one
        message at a time tells which of them were refused. None as well when
        neither came in time: the sender was not told, and the message will
        be missing where it was not heard."""
        with self.changed:
            errors = len(self.errors)
        say(self.ws, text)

        def answered() -> bool:
            return bool(len(self.errors) > errors or self.heard[text] or self.closed)

        with self.changed:
            self.changed.wait_for(answered, timeout)
            assert self.closed is None, f"the server closed a sender: {self.closed}"
            return self.errors[errors] if len(self.errors) > errors else None


def chat_socket_on_a_known_worker(stack, server, token, opened: int) -> ChatClient:
    """Open a chat socket and learn from the log which worker took it."""
    ws = stack.enter_context(open_socket(server, "/ws/chat", token=token))
    wait_until(
        lambda: len(CHAT_OPENED.findall(server.log())) > opened,
        30,
        "the log line of the new socket",
    )
    return ChatClient(ws, CHAT_OPENED.findall(server.log())[-1])


def test_a_redis_restart_never_delivers_to_some_clients_only(
    start_server, start_redis, alice, bob, make_user
):
    """Senders on both workers keep talking while Redis stops and comes back
    empty: each message reaches every client exactly once, or its sender is
    told it was not sent. Pub/sub failed this: a worker that had not
    subscribed again yet missed what the other worker's clients said."""
    redis_server = start_redis()
    server = start_server(REDIS_URL=redis_server.url, WEB_CONCURRENCY=str(WORKERS))
    tokens = [bearer_token(server, user) for user in (alice, bob, make_user())]
    with ExitStack() as stack:
        clients: list[ChatClient] = []
        while len(clients) < 20 or len({c.worker for c in clients}) < WORKERS:
            assert len(clients) < 3 * SOCKETS_PER_USER, "all on one worker"
            token = tokens[len(clients) % len(tokens)]
            clients.append(
                chat_socket_on_a_known_worker(stack, server, token, len(clients))
            )
        join_chat(*(client.ws for client in clients))
        for client in clients:
            client.start_reading()
        by_worker: dict[str, list[ChatClient]] = {}
        for client in clients:
            by_worker.setdefault(client.worker, []).append(client)
        senders = [client for held in by_worker.values() for client in held[:2]]
        print(
            "sockets per worker:",
            {worker: len(held) for worker, held in by_worker.items()},
        )

        stop = threading.Event()
        failed: list[BaseException] = []
        # text, when it was sent, the error it drew (None: it was sent)
        outcomes: list[tuple[str, float, str | None]] = []

        def keep_talking(sender: ChatClient, name: str) -> None:
            number = 0
            try:
                while not stop.is_set():
                    text = f"{name} message {number}"
                    sent_at = time.monotonic()
                    outcomes.append((text, sent_at, sender.tell(text)))
                    number += 1
                    # A pace, well below WS_MAX_MESSAGES_PER_SECOND (20).
                    stop.wait(0.1)
            except BaseException as error:
                failed.append(error)
                raise

        talking = [
            threading.Thread(target=keep_talking, args=(sender, f"sender {n}"))
            for n, sender in enumerate(senders)
        ]
        for thread in talking:
            thread.start()

        def stop_talking() -> None:
            stop.set()
            for thread in talking:
                thread.join(timeout=60)

        stack.callback(stop_talking)

        def sent(since: float = 0.0) -> int:
            assert not failed, f"a sender failed: {failed[0]!r}"
            return sum(
                1 for _, at, error in list(outcomes) if not error and at >= since
            )

        def refused() -> int:
            assert not failed, f"a sender failed: {failed[0]!r}"
            return sum(1 for _, _, error in list(outcomes) if error)

        wait_until(lambda: sent() >= 5 * len(senders), 30, "chat")
        redis_server.stop()
        # A second or two down: long enough for the workers to come back at
        # different moments, as their backoff has jitter.
        wait_until(lambda: refused() >= 15 * len(senders), 30, "refusals")
        start_redis(port=redis_server.port)
        back = time.monotonic()
        wait_until(
            lambda: sent(since=back) >= 10 * len(senders),
            90,
            "chat after Redis came back",
        )
        stop_talking()
        assert not failed, f"a sender failed: {failed[0]!r}"

        # Every sender has had its answer, so both workers read Redis again
        # and have made their replays: all that was sent is ahead of this in
        # the stream, and once every client has heard it nothing else is on
        # its way.
        wait_until(lambda: clients[0].tell("the end") is None, 30, "the end")
        wait_until(
            lambda: all(client.heard["the end"] for client in clients),
            30,
            "every client hearing the end",
        )

        accepted = [text for text, _, error in outcomes if not error]
        errors = Counter(error for _, _, error in outcomes if error)
        print(
            f"{len(accepted)} messages delivered ({sent(since=back)} sent after "
            f"Redis came back), {errors.total()} refused, {len(clients)} clients"
        )
        assert errors.keys() == {NOT_SENT["error"]}, errors
        wrong = {}
        for text in accepted:
            times = Counter(client.heard[text] for client in clients)
            if times != {1: len(clients)}:
                wrong[text] = ", ".join(
                    f"{many} clients heard it {n} times"
                    for n, many in sorted(times.items())
                )
        assert not wrong, f"{len(wrong)} of {len(accepted)} messages: {wrong}"
