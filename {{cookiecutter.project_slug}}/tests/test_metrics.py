"""GET /metrics: what the workers count, read the way Prometheus reads it.

The servers here run two gunicorn workers, so every figure must be the sum of
both, whichever worker answers the scrape.
"""

import json
import os
import re
import signal
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from .conftest import (
    PACKAGE,
    bearer_token,
    join_chat,
    open_socket,
    wait_until,
    workers,
)

TWO_WORKERS = workers(2, 40)
# Each worker keeps a tenth of 40 for HTTP.
SOCKETS_PER_WORKER = 36
# Two of 4 are kept for HTTP: 2 sockets a worker, 4 for both.
SMALL_WORKERS = workers(2, 4)
ECHO = "/ws/echo"
CHAT = "/ws/chat"
# Generous: a loaded machine may keep a worker from its once-a-second count.
METRIC_DEADLINE = 30


class Scrape:
    """One answer of /metrics, parsed."""

    def __init__(self, server) -> None:
        response = requests.get(f"{server.url}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain")
        self.samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = frozenset(sample.labels.items())
                self.samples[sample.name, labels] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for one not counted yet."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


def metric_becomes(server, name: str, value: float, **labels: str) -> None:
    """Wait until /metrics gives `value` for the sample: the server counts a
    moment after the client has seen what it counts (messages, within a
    second). Past the deadline, say what it gave last and what the server
    logged."""
    deadline = time.monotonic() + METRIC_DEADLINE
    while (now := Scrape(server)(name, **labels)) != value:
        if time.monotonic() > deadline:
            # The log, less the access lines of this loop's own scrapes.
            log = [line for line in server.log().splitlines() if "/metrics" not in line]
            pytest.fail(
                f"{name}{labels} = {value}: not within {METRIC_DEADLINE} s "
                f"(it gives {now}); the server's log ends with:\n"
                + "\n".join(log[-40:])
            )
        time.sleep(0.05)


def settled(server, values) -> Scrape:
    """A scrape once `values(scrape)` has not moved for longer than a worker
    takes to add its sockets' message counts (every second): every message
    sent before the call is counted in it."""
    deadline = time.monotonic() + METRIC_DEADLINE
    scrape = Scrape(server)
    steady_since = time.monotonic()
    while time.monotonic() - steady_since < 1.5:
        if time.monotonic() > deadline:
            pytest.fail(f"the counts kept moving for {METRIC_DEADLINE} s")
        time.sleep(0.1)
        again = Scrape(server)
        if values(again) != values(scrape):
            steady_since = time.monotonic()
        scrape = again
    return scrape


def workers_that_opened_sockets(server) -> set[int]:
    """The pids of the workers whose log says they accepted a socket."""
    return {
        int(pid)
        for pid in re.findall(r"\[(\d+)\] \[INFO\] WebSocket \S+ opened", server.log())
    }


def both_workers_booted(server, capacity: int = 2 * SOCKETS_PER_WORKER):
    """The server answers once one worker does; each counts its capacity when
    it has booted."""
    metric_becomes(server, "websocket_capacity", capacity)
    return server


@pytest.fixture(scope="module")
def two_workers(start_server):
    return both_workers_booted(start_server(**TWO_WORKERS))


def test_open_sockets_are_summed_over_both_workers(two_workers, alice, make_user):
    server = two_workers
    before = Scrape(server)
    tokens = [bearer_token(server, make_user()) for _ in range(4)]
    with ExitStack() as stack:
        opened = 0
        # The kernel hands each connection to one worker or the other: open
        # sockets until both hold some.
        while len(workers_that_opened_sockets(server)) < 2:
            assert opened < 30, f"every socket went to one worker:\n{server.log()}"
            token = tokens[opened % len(tokens)]
            stack.enter_context(open_socket(server, ECHO, token=token))
            opened += 1
        assert workers_that_opened_sockets(server) <= set(server.worker_pids())
        open_now = before("websocket_connections", route=ECHO) + opened
        metric_becomes(server, "websocket_connections", open_now, route=ECHO)
        # Whichever worker answers, the answer is the sum of both.
        for _ in range(10):
            assert Scrape(server)("websocket_connections", route=ECHO) == open_now
    metric_becomes(server, "websocket_connections", open_now - opened, route=ECHO)


def test_each_refused_handshake_counts_its_outcome(start_server, alice, make_user):
    """401, 403, 429 and 503 (no room), each under its outcome; the sockets
    admitted meanwhile as accepted."""
    server = start_server(**SMALL_WORKERS, WS_MAX_SOCKETS_PER_USER="1")
    both_workers_booted(server, capacity=4)
    before = Scrape(server)
    statuses = []

    def handshake(stack, token, **options) -> None:
        try:
            stack.enter_context(open_socket(server, ECHO, token=token, **options))
            statuses.append(101)
        except InvalidStatus as refused:
            statuses.append(refused.response.status_code)

    with ExitStack() as stack:
        handshake(stack, None)
        token = bearer_token(server, alice)
        handshake(stack, token, origin="https://evil.test")
        # One socket a user{% if cookiecutter.broadcast == "memory" %} in each worker: the third is refused
        # wherever it lands{% endif %}.
        while 429 not in statuses:
            assert len(statuses) < 6, statuses
            handshake(stack, token)
        # Room for 4 sockets in both workers: others' sockets fill it.
        while 503 not in statuses:
            assert len(statuses) < 16, statuses
            handshake(stack, bearer_token(server, make_user()))

    assert statuses[:2] == [401, 403]
    expected = {
        "accepted": statuses.count(101),
        "unauthenticated": 1,
        "forbidden_origin": 1,
        "over_user_limit": statuses.count(429),
        "over_capacity": statuses.count(503),
        "unavailable": 0,
    }
    assert set(statuses) == {101, 401, 403, 429, 503}
    after = Scrape(server)
    counted = {
        outcome: after("websocket_handshakes_total", outcome=outcome)
        - before("websocket_handshakes_total", outcome=outcome)
        for outcome in expected
    }
    assert counted == expected
{%- if cookiecutter.broadcast == "redis" %}


def test_a_handshake_while_redis_is_away_counts_as_unavailable(
    start_server, start_redis, alice
):
    """A user's sockets are counted in Redis: without it the count cannot be
    checked, and the handshake is refused with 503 under `unavailable`."""
    redis_server = start_redis()
    server = start_server(**TWO_WORKERS, REDIS_URL=redis_server.url)
    # The token before Redis goes: its rate limit is counted there too.
    token = bearer_token(server, alice)
    redis_server.stop()
    before = Scrape(server)
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, ECHO, token=token)
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "5"
    # Counted before the answer was sent: no wait needed.
    after = Scrape(server)
    expected = {
        "accepted": 0,
        "unauthenticated": 0,
        "forbidden_origin": 0,
        "over_user_limit": 0,
        "over_capacity": 0,
        "unavailable": 1,
    }
    counted = {
        outcome: after("websocket_handshakes_total", outcome=outcome)
        - before("websocket_handshakes_total", outcome=outcome)
        for outcome in expected
    }
    assert counted == expected
{%- endif %}


def test_echo_messages_are_counted_in_and_out(two_workers, alice):
    """A worker adds its open sockets' message counts every second, and a
    socket's last ones as it closes, each message once."""
    server = two_workers
    before = Scrape(server)
    counted = {
        direction: before("websocket_messages_total", route=ECHO, direction=direction)
        for direction in ("in", "out")
    }
    with open_socket(server, ECHO, token=bearer_token(server, alice)) as ws:
        for message in ["one", b"two", "three"]:
            ws.send(message)
            assert ws.recv(timeout=5) == message
        # The socket is still open.
        for direction in ("in", "out"):
            metric_becomes(
                server,
                "websocket_messages_total",
                counted[direction] + 3,
                route=ECHO,
                direction=direction,
            )
        ws.send("four")
        assert ws.recv(timeout=5) == "four"
    # The socket's end is done with once it no longer counts as open.
    metric_becomes(
        server,
        "websocket_connections",
        before("websocket_connections", route=ECHO),
        route=ECHO,
    )
    after = Scrape(server)
    assert {
        direction: after("websocket_messages_total", route=ECHO, direction=direction)
        for direction in ("in", "out")
    } == {direction: counted[direction] + 4 for direction in ("in", "out")}


def test_a_message_too_big_counts_a_1009_close(start_server, alice):
    server = start_server(**TWO_WORKERS, WS_MAX_MESSAGE_SIZE="1024")
    before = Scrape(server)
    with open_socket(server, ECHO, token=bearer_token(server, alice)) as ws:
        ws.send("x" * 2048)
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1009
    metric_becomes(
        server,
        "websocket_closes_total",
        before("websocket_closes_total", code="1009") + 1,
        code="1009",
    )
    # The client's own close of a socket counts as 1000.
    closed_normally = Scrape(server)("websocket_closes_total", code="1000")
    with open_socket(server, ECHO, token=bearer_token(server, alice)) as ws:
        ws.send("bye")
        assert ws.recv(timeout=5) == "bye"
    metric_becomes(server, "websocket_closes_total", closed_normally + 1, code="1000")


{%- if cookiecutter.broadcast == "redis" %}


@pytest.fixture(scope="module")
def chat_server(two_workers):
    return two_workers
{%- else %}


@pytest.fixture(scope="module")
def chat_server(start_server):
    # broadcast = memory reaches the chat clients of one worker only.
    return start_server(WEB_CONCURRENCY="1")
{%- endif %}


def test_chat_delivery_is_observed_once_per_socket_reached(
    chat_server, alice, bob, make_user
):
    server = chat_server
    clients = [alice, bob, make_user()]
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(
                open_socket(server, CHAT, token=bearer_token(server, email))
            )
            for email in clients
        ]
        join_chat(*sockets)
        # The markers join_chat sent reach /metrics within a second: count
        # from once they have.
        before = settled(
            server,
            lambda scrape: [
                scrape("websocket_messages_total", route=CHAT, direction=direction)
                for direction in ("in", "out")
            ],
        )
        for number in range(2):
            sockets[0].send(json.dumps({"text": f"message {number}"}))
        for ws in sockets:
            for number in range(2):
                assert json.loads(ws.recv(timeout=5))["text"] == f"message {number}"
        reached = 2 * len(sockets)
        metric_becomes(
            server,
            "chat_delivery_seconds_count",
            before("chat_delivery_seconds_count") + reached,
        )
        # Messages are added to /metrics every second.
        for direction, count in (("in", 2), ("out", reached)):
            metric_becomes(
                server,
                "websocket_messages_total",
                before("websocket_messages_total", route=CHAT, direction=direction)
                + count,
                route=CHAT,
                direction=direction,
            )
        after = Scrape(server)
    delivery = after("chat_delivery_seconds_sum") - before("chat_delivery_seconds_sum")
    assert 0 < delivery < reached * 5
    # Every observation falls in some bucket of the histogram.
    assert after("chat_delivery_seconds_bucket", le="+Inf") == after(
        "chat_delivery_seconds_count"
    )


def test_a_dead_workers_sockets_stop_counting(start_server, alice):
    server = both_workers_booted(start_server(**TWO_WORKERS))
    token = bearer_token(server, alice)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(open_socket(server, ECHO, token=token))
        metric_becomes(server, "websocket_connections", 3, route=ECHO)
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        # gunicorn starts new workers; the dead ones' files no longer count.
        metric_becomes(server, "websocket_connections", 0, route=ECHO)
        metric_becomes(server, "websocket_capacity", 2 * SOCKETS_PER_WORKER)


def test_a_named_folder_is_created_and_emptied_at_start(start_server, tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    # A file of an earlier run; unreadable, it would fail every scrape.
    (stale / "counter_1.db").write_bytes(b"x")
    new = tmp_path / "new" / "metrics"
    for folder in (stale, new):
        server = start_server(**TWO_WORKERS, PROMETHEUS_MULTIPROC_DIR=str(folder))
        both_workers_booted(server)
        names = {path.name for path in folder.iterdir()}
        assert "counter_1.db" not in names
        live = {f"gauge_livesum_{pid}.db" for pid in server.worker_pids()}
        assert live <= names, names
        server.stop()
        # Named by the setting: kept for the next start, which empties it.
        assert folder.is_dir()


def test_the_folder_made_at_start_goes_when_gunicorn_stops(start_server):
    def made() -> set[Path]:
        return set(Path(tempfile.gettempdir()).glob(f"{PACKAGE}-metrics-*"))

    before = made()
    server = start_server()
    (folder,) = made() - before
    # A reload reads gunicorn.conf.py and the settings again: the folder is
    # still the one made at start, and still goes at the end.
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "Hang up: Master" in server.log(), 15, "the reload")
    metric_becomes(server, "websocket_connections", 0, route=ECHO)
    assert made() - before == {folder}
    server.stop()
    assert not folder.exists()


def test_metrics_answer_outside_gunicorn(app, client):
    """flask run and the in-process tests: one process, which counts its own."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    capacity = float(app.config["WEBSOCKETS_PER_WORKER"])
    assert f"\nwebsocket_capacity {capacity}\n" in response.text
    assert 'websocket_handshakes_total{outcome="accepted"}' in response.text
