"""The production edge: the generated nginx config, run by the machine's nginx
in front of the test gunicorn, the way compose.yaml runs it in a container.

These tests speak plain HTTP to it: the variant for a load balancer in front
that ends TLS, where nginx serves the app on port 80 (tests/nginx.py). The
locations are the very ones the HTTPS server includes; tests/test_tls.py runs
the config as shipped, with HTTPS.
"""

import http.client
import re
import time
from contextlib import contextmanager

import pytest
import requests
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from .conftest import (
    PACKAGE,
    PROJECT_ROOT,
    bearer_token,
    echoes,
    log_in,
    open_socket,
    wait_until,
)
from .nginx import (
    IMAGE_STATIC,
    STATIC,
    compose_nginx_environment,
    compose_service,
    render_templates,
)

# The address a client of these tests connects from: loopback, but not the
# 127.0.0.1 that nginx uses towards the app, so the two cannot be confused.
CLIENT_ADDRESS = "127.0.0.2"
# Short enough to wait out in a test; the app pings every second.
SHORT_READ_TIMEOUT = 3


@pytest.fixture(scope="module")
def app_behind_proxy(start_server):
    """gunicorn as compose.yaml runs it: one trusted proxy in front, pinging
    every second."""
    return start_server(TRUSTED_PROXY_COUNT="1", WS_PING_INTERVAL="1")


@pytest.fixture(scope="module")
def proxy(start_nginx, app_behind_proxy):
    """nginx with the template variables compose.yaml sets."""
    return start_nginx(app_behind_proxy)


@contextmanager
def socket_from(address, url, *, token=None, headers=None, **options):
    """A WebSocket whose TCP connection leaves from `address`, with no
    client-side pings (only the server's keep the socket busy)."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with connect(
        url,
        additional_headers=headers,
        source_address=(address, 0),
        ping_interval=None,
        proxy=None,
        open_timeout=10,
        close_timeout=5,
        **options,
    ) as ws:
        yield ws


def address_seen_by_app(server, email: str) -> str:
    """The client address in the app's log line for `email`'s latest socket."""
    seen = re.findall(
        rf"WebSocket /ws/echo opened by {re.escape(email)} from (\S+)", server.log()
    )
    assert seen, f"no socket opened by {email} in the app's log:\n{server.log()}"
    return seen[-1]


def test_rendered_config_passes_nginx_t(proxy):
    checked = proxy.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_echo_through_nginx(proxy, alice):
    with open_socket(proxy, "/ws/echo", token=bearer_token(proxy, alice)) as ws:
        ws.send("héllo through nginx")
        assert ws.recv(timeout=5) == "héllo through nginx"
        ws.send(bytes(range(256)))
        assert ws.recv(timeout=5) == bytes(range(256))


def test_unauthenticated_handshake_through_nginx_gets_401(proxy):
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(proxy, "/ws/echo")
    response = refusal.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="websocket"'
    assert response.headers["Server"] == "nginx"


def test_foreign_origin_through_nginx_gets_403(proxy, alice):
    with pytest.raises(InvalidStatus) as refusal:
        open_socket(
            proxy,
            "/ws/echo",
            token=bearer_token(proxy, alice),
            origin="https://evil.test",
        )
    assert refusal.value.response.status_code == 403


def test_page_origin_is_allowed_through_nginx(proxy, alice):
    """The browser's Origin is nginx's host:port, not the app's: the app learns
    it from X-Forwarded-Host and lets the socket in."""
    browser = log_in(proxy, alice)
    with open_socket(proxy, "/ws/echo", browser=browser, origin=proxy.url) as ws:
        assert echoes(ws)


def test_app_sees_the_client_address_nginx_saw(proxy, app_behind_proxy, make_user):
    email = make_user()
    with socket_from(
        CLIENT_ADDRESS, f"{proxy.ws_url}/ws/echo", token=bearer_token(proxy, email)
    ) as ws:
        assert echoes(ws)
    assert address_seen_by_app(app_behind_proxy, email) == CLIENT_ADDRESS

    # nginx logs the socket when it closes; its $remote_addr is the same.
    def logged() -> list[str]:
        return [
            line.split()[0]
            for line in proxy.access_log.read_text().splitlines()
            if '"GET /ws/echo HTTP/1.1" 101' in line
        ]

    wait_until(lambda: CLIENT_ADDRESS in logged(), 5, "the socket in the access log")


# What a load balancer that ends TLS adds to each request it passes on.
BALANCER_HEADERS = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "chat.example.com",
}


def test_behind_a_load_balancer_that_ends_tls(start_server, start_nginx, make_user):
    """The variant of docs/production.md: nginx on plain HTTP behind the
    balancer, the app counting both proxies. nginx appends its own entries to
    the balancer's, so the app sees the client's address, https and the public
    host, and lets the page's socket in."""
    app = start_server(TRUSTED_PROXY_COUNT="2")
    proxy = start_nginx(app)
    email = make_user()
    with socket_from(
        CLIENT_ADDRESS,
        f"{proxy.ws_url}/ws/echo",
        token=bearer_token(proxy, email),
        headers=BALANCER_HEADERS,
        origin="https://chat.example.com",
    ) as ws:
        assert echoes(ws)
    assert address_seen_by_app(app, email) == "203.0.113.7"


def test_without_a_balancer_a_client_cannot_claim_https_or_a_host(
    proxy, app_behind_proxy, make_user
):
    """The same headers from a client straight to nginx (one trusted proxy):
    the app takes nginx's entries, so the claimed origin is refused and the
    claimed address ignored."""
    email = make_user()
    token = bearer_token(proxy, email)
    with (
        pytest.raises(InvalidStatus) as refusal,
        socket_from(
            CLIENT_ADDRESS,
            f"{proxy.ws_url}/ws/echo",
            token=token,
            headers=BALANCER_HEADERS,
            origin="https://chat.example.com",
        ),
    ):
        pass
    assert refusal.value.response.status_code == 403
    with socket_from(
        CLIENT_ADDRESS,
        f"{proxy.ws_url}/ws/echo",
        token=token,
        headers=BALANCER_HEADERS,
        origin=proxy.url,
    ) as ws:
        assert echoes(ws)
    assert address_seen_by_app(app_behind_proxy, email) == CLIENT_ADDRESS


def test_client_reaching_the_app_directly_cannot_forge_its_address(
    app_behind_proxy, make_user
):
    """X-Forwarded-For is believed only from FORWARDED_ALLOW_IPS (loopback's
    127.0.0.1 by default), so a client from elsewhere keeps its own address."""
    email = make_user()
    with socket_from(
        CLIENT_ADDRESS,
        f"{app_behind_proxy.ws_url}/ws/echo",
        token=bearer_token(app_behind_proxy, email),
        headers={"X-Forwarded-For": "203.0.113.7"},
    ) as ws:
        assert echoes(ws)
    assert address_seen_by_app(app_behind_proxy, email) == CLIENT_ADDRESS


def test_idle_socket_outlives_the_read_timeout_thanks_to_pings(
    start_nginx, app_behind_proxy, alice
):
    proxy = start_nginx(
        app_behind_proxy, NGINX_WS_READ_TIMEOUT=f"{SHORT_READ_TIMEOUT}s"
    )
    with socket_from(
        CLIENT_ADDRESS, f"{proxy.ws_url}/ws/echo", token=bearer_token(proxy, alice)
    ) as ws:
        time.sleep(2 * SHORT_READ_TIMEOUT)
        assert echoes(ws, "still here")


def test_without_pings_nginx_closes_the_idle_socket(start_nginx, start_server, alice):
    """The test above would pass for the wrong reason if nginx never timed out."""
    silent_app = start_server(TRUSTED_PROXY_COUNT="1", WS_PING_INTERVAL="0")
    proxy = start_nginx(silent_app, NGINX_WS_READ_TIMEOUT=f"{SHORT_READ_TIMEOUT}s")
    with socket_from(
        CLIENT_ADDRESS, f"{proxy.ws_url}/ws/echo", token=bearer_token(proxy, alice)
    ) as ws:
        opened = time.monotonic()
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=4 * SHORT_READ_TIMEOUT)
        waited = time.monotonic() - opened
    # nginx drops the TCP connection without a close frame: code 1006.
    assert closed.value.rcvd is None
    assert SHORT_READ_TIMEOUT - 0.5 <= waited < 3 * SHORT_READ_TIMEOUT


def test_permessage_deflate_is_refused_by_default(proxy, alice):
    with socket_from(
        CLIENT_ADDRESS, f"{proxy.ws_url}/ws/echo", token=bearer_token(proxy, alice)
    ) as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert echoes(ws)


def test_permessage_deflate_passes_through_when_the_app_turns_it_on(
    start_server, start_nginx, alice
):
    app = start_server(TRUSTED_PROXY_COUNT="1", WS_COMPRESSION="on")
    proxy = start_nginx(app)
    with socket_from(
        CLIENT_ADDRESS, f"{proxy.ws_url}/ws/echo", token=bearer_token(proxy, alice)
    ) as ws:
        accepted = ws.response.headers["Sec-WebSocket-Extensions"]
        assert accepted.startswith("permessage-deflate")
        assert echoes(ws)


def test_http_passes_through_and_hides_the_nginx_version(proxy):
    response = requests.get(f"{proxy.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["Server"] == "nginx"


def test_static_files_are_served_by_nginx(proxy, app_behind_proxy):
    response = requests.get(f"{proxy.url}/static/style.css", timeout=5)
    assert response.status_code == 200
    assert response.content == (STATIC / "style.css").read_bytes()
    assert "/static/style.css" not in app_behind_proxy.log()


def test_nginx_image_holds_the_static_files_the_app_ships():
    """The Dockerfile's nginx stage copies the package's own static folder to
    where /static/ is served from, and compose.yaml runs that image with no
    folder of the project mounted in its place: the image alone serves them."""
    assert STATIC == PROJECT_ROOT / "src" / PACKAGE / "static"
    assert (STATIC / "style.css").is_file()
    locations = render_templates()["app/locations.conf"]
    assert f"alias {IMAGE_STATIC}/;" in locations
    nginx = compose_service("nginx")
    assert "    build:\n      context: .\n      target: nginx\n" in nginx
    mounted = re.findall(r"^      - \./(\S+?):", nginx, re.M)
    assert mounted == ["deploy/nginx/certs", "deploy/nginx/acme"]


def get_from(address: str, proxy, paths: list[str]) -> list[tuple[int, str]]:
    """GET each of `paths` on one connection from `address`: (status, body)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", proxy.port, timeout=10, source_address=(address, 0)
    )
    answers = []
    try:
        for path in paths:
            connection.request("GET", path)
            response = connection.getresponse()
            answers.append((response.status, response.read().decode()))
    finally:
        connection.close()
    return answers


def test_nginx_answers_429_itself_past_its_limit_on_auth(start_nginx, app_behind_proxy):
    """The limit as compose.yaml ships it: a burst passes, then each address
    gets one request a second; the rest is refused by nginx and never reaches
    gunicorn. Other addresses and other paths are not affected."""
    shipped = compose_nginx_environment()
    rate = int(re.fullmatch(r"(\d+)r/s", shipped["NGINX_AUTH_RATE"]).group(1))
    burst = int(shipped["NGINX_AUTH_BURST"])
    edge = start_nginx(
        app_behind_proxy,
        NGINX_AUTH_RATE=shipped["NGINX_AUTH_RATE"],
        NGINX_AUTH_BURST=str(burst),
    )
    paths = [f"/auth/login?probe={n}" for n in range(burst + 30)]
    started = time.monotonic()
    answers = get_from(CLIENT_ADDRESS, edge, paths)
    elapsed = time.monotonic() - started

    statuses = [status for status, _ in answers]
    assert statuses[: burst + 1] == [200] * (burst + 1)
    served = statuses.count(200)
    assert served <= burst + 1 + rate * (int(elapsed) + 1), statuses
    refused = [n for n, (status, _) in enumerate(answers) if status == 429]
    assert len(refused) == len(paths) - served, statuses
    for n in refused:
        assert "<center>nginx</center>" in answers[n][1]
        assert f"probe={n} " not in app_behind_proxy.log()

    # Someone else, and the same client elsewhere than /auth/, are served.
    assert get_from("127.0.0.3", edge, ["/auth/login"])[0][0] == 200
    assert get_from(CLIENT_ADDRESS, edge, ["/healthz"])[0][0] == 200


def test_metrics_are_refused_through_nginx_but_answer_on_the_app(
    proxy, app_behind_proxy
):
    """Whatever the spelling of the path, nginx answers 404 for /metrics and
    the app never sees the request; the app's own port answers it."""
    paths = ["/metrics", "/metrics?format=text", "//metrics", "/%6Detrics"]
    answers = get_from(CLIENT_ADDRESS, proxy, paths)
    assert [status for status, _ in answers] == [404] * len(paths)
    for _, body in answers:
        assert "<center>nginx</center>" in body
        assert "websocket_" not in body
    assert not re.search(r'"GET /[/%]?(metrics|6Detrics)', app_behind_proxy.log())
    direct = requests.get(f"{app_behind_proxy.url}/metrics", timeout=10)
    assert direct.status_code == 200
    assert "websocket_connections" in direct.text
