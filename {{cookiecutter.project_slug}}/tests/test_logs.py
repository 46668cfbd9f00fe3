"""Logs: with LOG_FORMAT=json every line the server writes is one JSON object;
every line of a request or of a socket's life names the request's id, which
nginx chooses when it stands in front and the app returns on HTTP answers."""

import json
import re
from datetime import UTC, datetime

import pytest
import requests
from websockets.exceptions import InvalidStatus

from {{ cookiecutter.package_name }}.logs import utc_time

from .conftest import (
    bearer_token,
    echoes,
    make_app,
    open_socket,
    stop_process,
    wait_until,
    workers,
)

# A request id the app or nginx made: 32 hex digits.
MADE_HERE = re.compile(r"[0-9a-f]{32}")
# What every line has.
FIELDS = {"time", "level", "logger", "pid", "message"}


def json_lines(log: str) -> list[dict]:
    """Every line of `log` as the object it holds; fails on any other line."""
    objects = []
    for number, line in enumerate(log.splitlines(), 1):
        try:
            fields = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line!r}\n{log}")
        assert isinstance(fields, dict), f"line {number}: {line!r}"
        assert fields.keys() >= FIELDS, f"line {number}: {line!r}"
        assert datetime.fromisoformat(fields["time"]).utcoffset().total_seconds() == 0
        objects.append(fields)
    return objects


def the_one(lines: list[dict], what: str, **fields) -> dict:
    """The one line whose message starts with `what` and has these `fields`."""
    found = [
        line
        for line in lines
        if line.get("message", "").startswith(what)
        and all(line.get(key) == value for key, value in fields.items())
    ]
    assert len(found) == 1, f"{len(found)} lines {what!r} {fields}:\n{lines}"
    return found[0]


def socket_closed(server, email: str) -> bool:
    return f"of {email} closed with " in server.log()


def test_with_json_every_line_the_server_writes_is_an_object(start_server, alice):
    server = start_server(LOG_FORMAT="json", **workers(2, 8))
    answer = requests.get(f"{server.url}/healthz?probe=json", timeout=30)
    assert answer.status_code == 200
    request_id = answer.headers["X-Request-ID"]
    assert MADE_HERE.fullmatch(request_id)
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, "/ws/echo").close()
    assert refused.value.response.status_code == 401
    with open_socket(server, "/ws/echo", token=bearer_token(server, alice)) as ws:
        assert echoes(ws)
    wait_until(lambda: socket_closed(server, alice), 10, "the socket's last line")
    # Its shutdown too: every line from the first to the last.
    stop_process(server.process, timeout=40)

    lines = json_lines(server.log())
    the_one(lines, "Starting gunicorn", level="INFO", logger="gunicorn.error")
    the_one(lines, "Shutting down: Master")
    assert len({line["pid"] for line in lines}) >= 3  # the master, two workers

    health = the_one(lines, '"GET /healthz?probe=json HTTP/1.1" 200')
    assert health["logger"] == "gunicorn.access"
    assert health["request_id"] == request_id
    assert health["route"] == "/healthz"
    assert (health["method"], health["path"], health["query"]) == (
        "GET",
        "/healthz",
        "probe=json",
    )
    assert health["status"] == 200
    assert health["duration"] >= 0
    refusal = the_one(lines, '"GET /ws/echo HTTP/1.1" 401')
    assert MADE_HERE.fullmatch(refusal["request_id"])

    opened = the_one(lines, f"WebSocket /ws/echo opened by {alice} ")
    closed = the_one(lines, f"WebSocket /ws/echo of {alice} closed with 1000 after ")
    for line in (opened, closed):
        assert line["level"] == "INFO"
        assert line["route"] == "/ws/echo"
    assert MADE_HERE.fullmatch(opened["request_id"])
    assert closed["request_id"] == opened["request_id"] != refusal["request_id"]
    assert isinstance(opened["user"], int)
    assert closed["user"] == opened["user"]
    assert closed["close_code"] == 1000
    assert 0 <= closed["duration"] < 60


def test_text_lines_end_with_the_request_id(server, make_user):
    # A user of its own: the shared server's log has other sockets' lines.
    email = make_user()
    with open_socket(server, "/ws/echo", token=bearer_token(server, email)) as ws:
        assert echoes(ws)
    wait_until(lambda: socket_closed(server, email), 10, "the socket's last line")
    log = server.log()
    opened = re.findall(
        rf"\] WebSocket /ws/echo opened by {re.escape(email)} from \S+ "
        r"\[request ([0-9a-f]{32})\]$",
        log,
        re.M,
    )
    closed = re.findall(
        rf"\] WebSocket /ws/echo of {re.escape(email)} closed with 1000 after "
        r"[\d.]+ s \[request ([0-9a-f]{32})\]$",
        log,
        re.M,
    )
    assert len(opened) == len(closed) == 1
    assert opened == closed


@pytest.fixture(scope="module")
def app_behind_nginx(start_server):
    return start_server(LOG_FORMAT="json", TRUSTED_PROXY_COUNT="1")


def nginx_request_id(proxy, request_line: str) -> str | None:
    """The id nginx wrote last on its access line for `request_line`."""
    for line in proxy.access_log.read_text().splitlines():
        if f'"{request_line}"' in line:
            return line.rsplit(" ", 1)[1]
    return None


def test_the_id_nginx_chooses_is_on_the_apps_lines(
    start_nginx, app_behind_nginx, alice
):
    proxy = start_nginx(app_behind_nginx)
    # A client's own id is not believed (NGINX_TRUST_REQUEST_ID is off).
    answer = requests.get(
        f"{proxy.url}/healthz?probe=logs", headers={"X-Request-ID": "mine"}, timeout=30
    )
    assert answer.status_code == 200
    request_id = answer.headers["X-Request-ID"]
    assert MADE_HERE.fullmatch(request_id)
    with open_socket(proxy, "/ws/echo", token=bearer_token(proxy, alice)) as ws:
        assert echoes(ws)

    # nginx writes a socket's line when it ends.
    def socket_id() -> str | None:
        return nginx_request_id(proxy, "GET /ws/echo HTTP/1.1")

    wait_until(lambda: socket_id() is not None, 10, "nginx's line of the socket")
    wait_until(
        lambda: socket_closed(app_behind_nginx, alice), 10, "the socket's last line"
    )
    assert nginx_request_id(proxy, "GET /healthz?probe=logs HTTP/1.1") == request_id

    lines = json_lines(app_behind_nginx.log())
    health = the_one(lines, '"GET /healthz?probe=logs HTTP/1.1" 200')
    assert health["request_id"] == request_id
    opened = the_one(lines, f"WebSocket /ws/echo opened by {alice} ")
    closed = the_one(lines, f"WebSocket /ws/echo of {alice} closed with 1000")
    assert opened["request_id"] == closed["request_id"] == socket_id()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("lb-7f3a9c", True),
        ("0f3c8a5e-2b7d-4e6f-9a1b-2c3d4e5f6a7b", True),
        ("two words", False),
        ("x" * 129, False),
    ],
)
def test_nginx_keeps_a_well_formed_id_only_when_told_to(
    start_nginx, app_behind_nginx, sent, kept
):
    proxy = start_nginx(app_behind_nginx, NGINX_TRUST_REQUEST_ID="on")
    answer = requests.get(
        f"{proxy.url}/healthz", headers={"X-Request-ID": sent}, timeout=30
    )
    assert answer.status_code == 200
    if kept:
        assert answer.headers["X-Request-ID"] == sent
    else:
        assert MADE_HERE.fullmatch(answer.headers["X-Request-ID"])


# In process: which id the app takes.


@pytest.mark.parametrize(
    ("trusted_proxies", "sent", "kept"),
    [
        ("0", "from-the-client", False),
        ("1", "from-the-proxy", True),
        ("1", "x" * 129, False),
        ("1", "", False),
    ],
)
def test_the_app_keeps_only_a_trusted_proxys_id(
    app_settings, trusted_proxies, sent, kept
):
    app = make_app({**app_settings, "TRUSTED_PROXY_COUNT": trusted_proxies})
    answer = app.test_client().get("/healthz", headers={"X-Request-ID": sent})
    assert answer.status_code == 200
    if kept:
        assert answer.headers["X-Request-ID"] == sent
    else:
        assert MADE_HERE.fullmatch(answer.headers["X-Request-ID"])


def test_each_request_gets_an_id_of_its_own(client):
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3
    missing = client.get("/no-such-page")
    assert missing.status_code == 404
    assert MADE_HERE.fullmatch(missing.headers["X-Request-ID"])
    assert missing.headers["X-Request-ID"] not in ids


def test_each_lines_time_is_utc_to_the_millisecond():
    """The time of each line, in ISO 8601, as datetime writes it, whether the
    line falls in the same second as the one before it or not."""
    second = datetime(2026, 11, 29, 21, 8, 24, tzinfo=UTC).timestamp()
    # The next second's first millisecond, rounded up from its last microsecond.
    carried = second + 0.9999996
    for created in [second + 0.733, second + 0.0004, carried, second + 1.999]:
        expected = datetime.fromtimestamp(created, UTC).isoformat(
            timespec="milliseconds"
        )
        assert utc_time(created) == expected
    assert utc_time(second + 0.733) == "2026-11-29T21:08:24.733+00:00"
