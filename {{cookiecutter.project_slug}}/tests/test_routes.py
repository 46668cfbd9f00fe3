"""A WebSocket route is declared with `websocket_route`, which puts the gate in
front of it wherever it is; a route declared any other way is refused."""

import pytest
from websockets.exceptions import InvalidStatus

from .conftest import bearer_token, open_socket
from .test_session import APP


@pytest.fixture(scope="module")
def test_app_server(start_server):
    # The app plus the routes of tests/session_writer.py, on a blueprint of
    # their own.
    return start_server(app=APP)


def test_route_declared_on_another_blueprint_is_guarded_too(test_app_server):
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(test_app_server, "/ws/session-writer")
    assert refusal.value.response.status_code == 401


def test_route_declared_with_plain_sock_route_gets_500(test_app_server, alice):
    token = bearer_token(test_app_server, alice)
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(test_app_server, "/ws/undeclared", token=token)
    assert refusal.value.response.status_code == 500
    assert (
        "refusing a WebSocket on /ws/undeclared: its route was declared with "
        "sock.route; declare it with websocket_route" in test_app_server.log()
    )
