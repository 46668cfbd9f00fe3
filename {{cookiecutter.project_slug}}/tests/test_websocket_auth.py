"""Who may open a socket: decided before the handshake, in plain HTTP."""

import pytest
import requests
from websockets.exceptions import InvalidStatus

from .conftest import bearer_token, csrf_token, log_in, open_socket


def refused(server, path="/ws/echo", **credentials) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(server, path, **credentials)
    return refusal.value


@pytest.mark.parametrize("path", ["/ws/echo", "/ws/chat"])
def test_unauthenticated_handshake_gets_401(server, path):
    refusal = refused(server, path)
    # InvalidStatus means the server answered something other than 101.
    assert refusal.response.status_code == 401
    assert refusal.response.headers["WWW-Authenticate"] == 'Bearer realm="websocket"'
    assert refusal.response.body == b'{"error":"authentication required"}\n'


def test_forged_token_gets_401(server, alice):
    token = bearer_token(server, alice)
    signed, signature = token.rsplit(".", 1)
    # Another first character: its six bits all count, unlike the last
    # character's, whose low bits a decoder drops (a token ending in other
    # letters that decode the same is not a forgery, and once in a thousand
    # runs "xx" at the end was just that).
    first = "A" if signature[0] != "A" else "B"
    forged = f"{signed}.{first}{signature[1:]}"
    assert refused(server, token=forged).response.status_code == 401


def test_foreign_origin_gets_403_even_with_valid_credentials(server, alice):
    refusal = refused(
        server, token=bearer_token(server, alice), origin="https://evil.test"
    )
    assert refusal.response.status_code == 403
    assert refusal.response.body == b'{"error":"origin not allowed"}\n'


def test_cookie_from_foreign_page_gets_403(server, alice):
    browser = log_in(server, alice)
    refusal = refused(server, browser=browser, origin="http://127.0.0.1:1")
    assert refusal.response.status_code == 403


def test_login_form_then_cookie_authenticated_socket(server, alice):
    browser = log_in(server, alice)
    with open_socket(server, "/ws/echo", browser=browser) as ws:
        ws.send("hello from the browser")
        assert ws.recv(timeout=5) == "hello from the browser"


def test_bearer_token_socket(server, alice):
    with open_socket(server, "/ws/echo", token=bearer_token(server, alice)) as ws:
        ws.send("hello from a script")
        assert ws.recv(timeout=5) == "hello from a script"


def test_logout_ends_socket_access(server, alice):
    browser = log_in(server, alice)
    page = browser.get(f"{server.url}/")
    response = browser.post(
        f"{server.url}/auth/logout",
        data={"csrf_token": csrf_token(page.text)},
        allow_redirects=False,
    )
    assert response.status_code == 302
    assert refused(server, browser=browser).response.status_code == 401


def test_allowed_origins_setting_admits_only_the_listed_origins(start_server, alice):
    server = start_server(ALLOWED_ORIGINS="https://chat.example.com, https://b.example")
    token = bearer_token(server, alice)
    with open_socket(
        server, "/ws/echo", token=token, origin="https://chat.example.com"
    ):
        pass
    assert refused(server, token=token, origin=server.url).response.status_code == 403


def test_plain_http_request_to_a_socket_route_is_refused(server, alice):
    response = requests.get(
        f"{server.url}/ws/echo",
        headers={"Authorization": f"Bearer {bearer_token(server, alice)}"},
        timeout=30,
    )
    assert response.status_code == 400
