"""What one user or one socket may take: sockets per user, chat messages per
second, and no compression unless it is turned on."""

import json
{%- if cookiecutter.broadcast == "redis" %}
import os
import signal
import threading
import time
{%- endif %}
import zlib
from contextlib import ExitStack, suppress

import pytest
{%- if cookiecutter.broadcast == "redis" %}
import redis
{%- endif %}
from websockets.exceptions import ConnectionClosedError, InvalidStatus
{%- if cookiecutter.broadcast == "redis" %}

from {{ cookiecutter.package_name }}.realtime.redis_user_sockets import PREFIX, WORKERS
{%- endif %}

from .conftest import RawWebSocket, bearer_token, open_socket, wait_until

SOCKETS_PER_USER = 3


@pytest.fixture(scope="module")
def limited_server(start_server):
    return start_server(
        WS_MAX_SOCKETS_PER_USER=str(SOCKETS_PER_USER),
        WS_MAX_MESSAGES_PER_SECOND="1",
    )


def admitted(server, token: str):
    """A socket, or None while the user holds the limit."""
    try:
        return open_socket(server, "/ws/echo", token=token)
    except InvalidStatus as error:
        assert error.response.status_code == 429
        return None


def test_a_user_at_the_socket_limit_gets_429_until_one_closes(
    limited_server, alice, bob
):
    token = bearer_token(limited_server, alice)
    with ExitStack() as stack:
        held = [
            stack.enter_context(open_socket(limited_server, "/ws/echo", token=token))
            for _ in range(SOCKETS_PER_USER)
        ]
        # Several tries, so that with several workers each worker is asked.
        for _ in range(6):
            with pytest.raises(InvalidStatus) as refused:
                open_socket(limited_server, "/ws/chat", token=token)
            response = refused.value.response
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "5"
            assert json.loads(response.body) == {
                "error": f"you hold {SOCKETS_PER_USER} WebSockets already; "
                "close one first"
            }
        # Another user is not held back.
        other = bearer_token(limited_server, bob)
        with open_socket(limited_server, "/ws/echo", token=other) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"

        held[0].close()
        with wait_until(
            lambda: admitted(limited_server, token), 10, "a place for the user again"
        ) as ws:
            ws.send("room again")
            assert ws.recv(timeout=5) == "room again"
{%- if cookiecutter.broadcast == "redis" %}


def hold_the_limit(stack: ExitStack, server, token: str, refusing=None) -> None:
    """Open every socket the user may hold on `server`; the next one, on
    `refusing` (default: the same server), gets 429."""
    for _ in range(SOCKETS_PER_USER):
        stack.enter_context(open_socket(server, "/ws/echo", token=token))
    with pytest.raises(InvalidStatus) as refused:
        open_socket(refusing or server, "/ws/echo", token=token)
    assert refused.value.response.status_code == 429


def test_the_socket_limit_spans_instances(start_server, alice):
    limit = {"WS_MAX_SOCKETS_PER_USER": str(SOCKETS_PER_USER)}
    first, second = start_server(**limit), start_server(**limit)
    token = bearer_token(first, alice)
    with ExitStack() as stack:
        hold_the_limit(stack, first, token, refusing=second)
    # Closed on the first instance: the second has room for the user again.
    with wait_until(
        lambda: admitted(second, token), 10, "a place on the second instance"
    ) as ws:
        ws.send("here")
        assert ws.recv(timeout=5) == "here"


def test_sockets_of_workers_that_died_stop_counting(start_server, alice):
    server = start_server(
        WS_MAX_SOCKETS_PER_USER=str(SOCKETS_PER_USER), WEB_CONCURRENCY="2"
    )
    token = bearer_token(server, alice)
    with ExitStack() as stack:
        hold_the_limit(stack, server, token)
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)

    # gunicorn starts new workers; the dead ones' sockets no longer count.
    with ExitStack() as stack:
        wait_until(
            one_more_until_the_limit(stack, [server], token),
            30,
            "the user's sockets admitted again",
        )


def one_more_until_the_limit(stack: ExitStack, servers: list, token: str):
    """A condition for wait_until: each call opens one more socket (kept in
    `stack`) on the next of `servers`, true once the user holds the limit."""
    held = []

    def one_more() -> bool:
        with suppress(OSError):
            ws = admitted(servers[len(held) % len(servers)], token)
            if ws is not None:
                held.append(stack.enter_context(ws))
        return len(held) == SOCKETS_PER_USER

    return one_more


def leases_in(url: str) -> dict[str, dict[bytes, bytes]]:
    """{worker hash: {user id: places}} of the leases a Redis holds."""
    with redis.Redis.from_url(url) as client:
        return {
            key.decode(): client.hgetall(key)
            for key in client.scan_iter(f"{PREFIX}:*")
            if key.decode() != WORKERS
        }


def leased_places(url: str) -> int:
    return sum(
        int(places) for leases in leases_in(url).values() for places in leases.values()
    )


def test_a_closed_sockets_lease_goes_back_to_redis(start_server, start_redis, alice):
    """The place of a closed socket goes back to Redis as its request ends,
    so that any worker may lease it."""
    store = start_redis()
    server = start_server(REDIS_URL=store.url, WS_MAX_SOCKETS_PER_USER="2")
    token = bearer_token(server, alice)
    with open_socket(server, "/ws/echo", token=token) as ws:
        ws.send("leased")
        assert ws.recv(timeout=5) == "leased"
        (places,) = leases_in(store.url).values()
        assert list(places.values()) == [b"1"]
    wait_until(lambda: leases_in(store.url) == {}, 10, "the lease given back")


def test_the_count_stays_exact_when_redis_forgets_its_scripts(
    start_server, start_redis, alice
):
    """A Redis that lost its scripts (SCRIPT FLUSH; a restart keeps no
    script) answers the next lease, and the next place given back, without
    running them: each is sent again whole, once, and counts once."""
    store = start_redis()
    server = start_server(REDIS_URL=store.url, WS_MAX_SOCKETS_PER_USER="1")
    token = bearer_token(server, alice)
    with redis.Redis.from_url(store.url) as client:
        with open_socket(server, "/ws/echo", token=token) as ws:
            ws.send("leased")
            assert ws.recv(timeout=5) == "leased"
            client.script_flush()  # before its place goes back
        wait_until(lambda: leases_in(store.url) == {}, 10, "the place given back")

        client.script_flush()  # before the next lease
        with open_socket(server, "/ws/echo", token=token) as ws:
            ws.send("leased again")
            assert ws.recv(timeout=5) == "leased again"
            assert leased_places(store.url) == 1
            with pytest.raises(InvalidStatus) as refused:
                open_socket(server, "/ws/echo", token=token)
            assert refused.value.response.status_code == 429
        wait_until(lambda: leases_in(store.url) == {}, 10, "the place given back")


def test_the_first_handshake_after_a_redis_restart_is_admitted(
    start_server, start_redis, alice
):
    """The worker's idle connection to Redis died with the old Redis: the next
    lease notices it before sending and connects again, rather than fail that
    handshake with 503. (The places leased before are gone with the old
    Redis: the worker's next renewal writes its own count back.)"""
    store = start_redis()
    server = start_server(REDIS_URL=store.url, WEB_CONCURRENCY="1")
    token = bearer_token(server, alice)
    with open_socket(server, "/ws/echo", token=token) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
    wait_until(lambda: leases_in(store.url) == {}, 10, "the place given back")
    store.stop()
    store = start_redis(port=store.port)
    with open_socket(server, "/ws/echo", token=token) as ws:
        ws.send("after")
        assert ws.recv(timeout=5) == "after"
        assert leased_places(store.url) == 1
    wait_until(lambda: leases_in(store.url) == {}, 10, "the place given back")


def test_a_place_closed_on_one_instance_is_free_on_the_other_at_once(
    start_server, start_redis, alice
):
    """A user at the limit closes one socket and opens one on another
    instance: admitted as soon as the closed socket's request has ended and
    its place is back in Redis, on the first try."""
    store = start_redis()
    limit = {"REDIS_URL": store.url, "WS_MAX_SOCKETS_PER_USER": str(SOCKETS_PER_USER)}
    first, second = start_server(**limit), start_server(**limit)
    token = bearer_token(first, alice)
    with ExitStack() as stack:
        held = [
            stack.enter_context(open_socket(first, "/ws/echo", token=token))
            for _ in range(SOCKETS_PER_USER)
        ]
        held[0].close()
        # The close frame reaches the client just before the server's
        # request ends: wait for that end, seen in Redis, and no longer.
        wait_until(
            lambda: leased_places(store.url) == SOCKETS_PER_USER - 1,
            10,
            "the closed socket's request to end",
        )
        ws = stack.enter_context(open_socket(second, "/ws/echo", token=token))
        ws.send("at once")
        assert ws.recv(timeout=5) == "at once"


def test_the_limit_holds_for_many_handshakes_at_once(start_server, start_redis, alice):
    """Handshakes of one user, many at once, on two instances of two workers,
    each socket closed a moment after it opened: leases taken, reused and
    given back meanwhile never let more sockets in than the limit, and once
    all are closed the user has every place again."""
    store = start_redis()
    limit = {
        "REDIS_URL": store.url,
        "WS_MAX_SOCKETS_PER_USER": str(SOCKETS_PER_USER),
        "WEB_CONCURRENCY": "2",
    }
    servers = [start_server(**limit), start_server(**limit)]
    token = bearer_token(servers[0], alice)
    guard = threading.Lock()
    open_now, most, admitted_total, failures = [0], [0], [0], []

    def churn(number: int) -> None:
        for turn in range(15):
            ws = admitted(servers[(number + turn) % 2], token)
            if ws is None:
                continue
            with ws:
                with guard:
                    # Counted once the server has admitted it, uncounted
                    # before the client closes it: never above the server's.
                    open_now[0] += 1
                    admitted_total[0] += 1
                    most[0] = max(most[0], open_now[0])
                time.sleep((number + turn) % 4 * 0.01)
                with guard:
                    open_now[0] -= 1

    def run(number: int) -> None:
        try:
            churn(number)
        except Exception as error:  # reported below, on the test's thread
            failures.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert 0 < most[0] <= SOCKETS_PER_USER, most[0]
    assert admitted_total[0] >= SOCKETS_PER_USER
    with ExitStack() as stack:
        wait_until(
            one_more_until_the_limit(stack, servers, token),
            15,
            "every place of the user back",
        )
    wait_until(lambda: leases_in(store.url) == {}, 10, "every lease given back")


# Keeps Redis busy for ARGV[1] seconds: a script runs alone, and others wait.
BUSY = """
local function now()
    local time = redis.call('TIME')
    return tonumber(time[1]) + tonumber(time[2]) / 1e6
end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
"""
# Longer than the app waits for Redis (2 s), shorter than Redis's own limit
# on a script (5 s), past which it would answer others BUSY instead.
BUSY_SECONDS = 4


def test_a_socket_counted_after_the_app_gave_up_on_redis_is_not_kept(
    start_server, start_redis, alice
):
    """Redis answers the handshake's count too late: the handshake gets 503,
    yet Redis counts the socket once it is free. The worker puts its own
    count back, so the user is not locked out for as long as it lives (nor
    counted twice by a resent command)."""
    store = start_redis()
    server = start_server(REDIS_URL=store.url, WS_MAX_SOCKETS_PER_USER="1")
    token = bearer_token(server, alice)
    with open_socket(server, "/ws/echo", token=token) as ws:
        ws.send("first")  # the worker now renews its count in this Redis
        assert ws.recv(timeout=5) == "first"
    wait_until(lambda: leases_in(store.url) == {}, 10, "the lease given back")

    client = redis.Redis.from_url(store.url)
    busy = threading.Thread(target=client.eval, args=(BUSY, 0, BUSY_SECONDS))
    busy.start()
    probe = redis.Redis.from_url(store.url, socket_timeout=0.2)

    def redis_is_busy() -> bool:
        try:
            probe.ping()
        except redis.TimeoutError:
            return True
        return False

    wait_until(redis_is_busy, 10, "the script to occupy Redis")
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, "/ws/echo", token=token)
    assert refused.value.response.status_code == 503
    busy.join(timeout=30)

    with wait_until(lambda: admitted(server, token), 30, "the user's place back") as ws:
        ws.send("back")
        assert ws.recv(timeout=5) == "back"
{%- endif %}


def test_a_chat_client_past_its_message_rate_gets_errors_then_1008(
    limited_server, alice
):
    # One message a second, so three at once: the first passes, the second is
    # refused with an error, the third is a flood and closes the socket.
    with open_socket(
        limited_server, "/ws/chat", token=bearer_token(limited_server, alice)
    ) as ws:
        for number in range(3):
            ws.send(json.dumps({"text": f"message {number}"}))
        received = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                received.append(json.loads(ws.recv(timeout=10)))
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "too many messages"
    errors = [message for message in received if message["type"] == "error"]
    assert errors == [
        {"type": "error", "error": "too many messages; at most 1 a second"}
    ]
    # Through Redis, the first message may come back after the close.
    assert [m["text"] for m in received if m["type"] == "message"] in (
        ["message 0"],
        [],
    )


def test_permessage_deflate_is_refused_unless_turned_on(server, start_server, alice):
    token = bearer_token(server, alice)
    with open_socket(server, "/ws/echo", token=token, compression="deflate") as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=5) == "plain"

    compressing = start_server(WS_COMPRESSION="on")
    with open_socket(compressing, "/ws/echo", token=token, compression="deflate") as ws:
        accepted = ws.response.headers["Sec-WebSocket-Extensions"]
        assert accepted.startswith("permessage-deflate")
        ws.send("squeezed " * 100)
        assert ws.recv(timeout=5) == "squeezed " * 100


def compressed_zeros(size: int) -> bytes:
    """`size` zero bytes as one permessage-deflate payload: about 1/1000 of it."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    payload = b"".join(deflate.compress(chunk) for _ in range(size // len(chunk)))
    payload += deflate.flush(zlib.Z_SYNC_FLUSH)
    return payload[:-4]  # RFC 7692 7.2.1: the trailing 00 00 ff ff goes


def test_compressed_bombs_cost_no_memory(server, alice, bob, make_user):
    """40 sockets each send 64 MiB of zeros compressed into 64 KB: without the
    extension the frame is a protocol error, and nothing is inflated."""
    bomb = compressed_zeros(64 << 20)
    users = [alice, bob, make_user(), make_user()]
    tokens = [bearer_token(server, user) for user in users]
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate"}
    memory_before = server.workers_memory()
    for token in tokens:  # each user's 10 sockets at once
        sockets = [
            RawWebSocket(server, "/ws/echo", token, headers=offer) for _ in range(10)
        ]
        for raw in sockets:
            assert raw.status == 101
            assert "sec-websocket-extensions" not in raw.headers
            # The server may stop reading at the frame's first bytes.
            with suppress(ConnectionError):
                raw.send_frame(RawWebSocket.BINARY, bomb, rsv1=True)
        for raw in sockets:
            assert raw.messages_until_close() == ([], 1002)
            raw.close()
    growth = server.workers_memory() - memory_before
    assert growth < 60 * 1024 * 1024, f"the workers grew by {growth >> 20} MiB"
