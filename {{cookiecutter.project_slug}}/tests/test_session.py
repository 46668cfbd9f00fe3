"""A handler that changes the session is told, loudly, that it cannot be saved."""

import json
import secrets

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from .conftest import log_in, open_socket, wait_until

APP = "tests.session_writer:create_session_writer_app()"
LOST_CHANGE = (
    "the session was changed inside the WebSocket handler of /ws/session-writer; "
    "the change cannot be saved"
)


def test_session_change_is_an_error_under_tests(start_server, alice):
    server = start_server(app=APP)
    with open_socket(server, "/ws/session-writer", browser=log_in(server, alice)) as ws:
        assert ws.recv(timeout=5) == "visits before: 0"
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 1011
    log = server.log()
    assert "SessionChangeNotSaved" in log
    assert LOST_CHANGE in log


def test_session_change_is_a_warning_in_production(start_server, alice):
    secret = secrets.token_urlsafe(48)
    server = start_server(app=APP, APP_ENV="production", SECRET_KEY=secret)
    browser = log_in(server, alice)
    with open_socket(server, "/ws/session-writer", browser=browser) as ws:
        assert ws.recv(timeout=5) == "visits before: 0"
        assert ws.recv(timeout=5) == "changed the session"
        ws.send("the socket goes on")
        assert ws.recv(timeout=5) == "the socket goes on"
    assert f"WARNING] {LOST_CHANGE}" in server.log().replace("[WARNING]", "WARNING]")
    # And indeed it was not saved: the next socket sees the old session.
    with open_socket(server, "/ws/session-writer", browser=browser) as ws:
        assert ws.recv(timeout=5) == "visits before: 0"


def test_a_handler_reads_its_request_as_parsed_at_the_handshake(start_server, alice):
    """Once the socket is open its environ keeps only what the socket still
    reads (realtime/connections.py): the cookie, the token and every header but
    Host are gone, what Werkzeug parsed at the start stays."""
    server = start_server(app=APP)
    with open_socket(server, "/ws/request?room=7", browser=log_in(server, alice)) as ws:
        seen = json.loads(ws.recv(timeout=5))
        ws.send("still echoing")
        assert ws.recv(timeout=5) == "still echoing"
    assert seen == {
        "path": "/ws/request",
        "args": {"room": "7"},
        "remote_addr": "127.0.0.1",
        "headers": ["Host"],
        "logged_in": True,
        "user": alice,
    }


def test_a_closed_sockets_response_is_left_alone(start_server, alice):
    """Once a socket has closed, Flask runs no `after_request` hook and saves
    no session into the response of its request, which is never sent; its
    teardown hooks still run. A handshake refused before its 101 is an HTTP
    response, and gets them all."""
    server = start_server(app=APP)
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, "/ws/request")
    assert refused.value.response.status_code == 401
    with open_socket(server, "/ws/request", browser=log_in(server, alice)) as ws:
        json.loads(ws.recv(timeout=5))
    # Teardown comes after `after_request`: both requests are over.
    wait_until(
        lambda: server.log().count("teardown ran for /ws/request") == 2,
        10,
        "both requests end",
    )
    log = server.log()
    assert log.count("after_request ran for /ws/request") == 1
    assert "after_request ran for /ws/request (401)" in log


def test_the_session_serializer_is_kept_until_the_keys_change(app):
    """realtime/session.py makes Flask's signing serializer once, not on every
    request; a new key (with the old one among SECRET_KEY_FALLBACKS) gets a
    new one, which still reads a cookie signed with the old key."""
    interface = app.session_interface
    first = interface.get_signing_serializer(app)
    assert interface.get_signing_serializer(app) is first
    cookie = first.dumps({"kept": "yes"})
    old_key, app.secret_key = app.secret_key, secrets.token_urlsafe(48)
    app.config["SECRET_KEY_FALLBACKS"] = [old_key]
    rotated = interface.get_signing_serializer(app)
    assert rotated is not first
    assert rotated.loads(cookie) == {"kept": "yes"}
    assert rotated.dumps({"kept": "yes"}) != cookie  # signed with the new key
