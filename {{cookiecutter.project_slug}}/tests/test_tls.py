"""HTTPS at nginx, as compose.yaml runs it: the shipped config with a
certificate pair in its folder, in front of the app in production (Secure
cookies) behind one proxy.

The pair comes from a throwaway CA made by trustme, in the process, for
127.0.0.1 and localhost; the clients here trust that CA and nothing else, so
every handshake really checks the certificate and the name.
"""

import asyncio
import json
import socket
import ssl

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import PASSWORD, cookie_header, csrf_token, require
from .nginx import write_certificates

try:
    import trustme
except ImportError:  # in the dev extra; the `ca` fixture says so
    trustme = None

# Mozilla's minimum, two years; no includeSubDomains (default.conf.template).
HSTS = "max-age=63072000"
# Mozilla's "intermediate" TLS 1.2 ciphers, written out here on purpose.
MOZILLA_TLS_1_2_CIPHERS = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
}


@pytest.fixture(scope="module")
def ca():
    require(
        trustme is not None,
        "trustme is not installed; it is in the dev extra: pip install -e '.[dev]'",
    )
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    """A stand-in for deploy/nginx/certs: fullchain.pem and privkey.pem."""
    return write_certificates(ca, tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory) -> str:
    """The CA's certificate, for requests' `verify`."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def context_trusting(
    ca_file: str, *, version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    """A client context that trusts the test CA and no other: the certificate
    and the host name are checked, as ssl's defaults do. `version` pins the
    TLS version; `ciphers` limits the TLS 1.2 ciphers offered."""
    context = ssl.create_default_context(cafile=ca_file)
    if version:
        context.minimum_version = version
        context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    return context


@pytest.fixture(scope="module")
def client_context(ca_file) -> ssl.SSLContext:
    return context_trusting(ca_file)


@pytest.fixture(scope="module")
def production_app(start_server):
    """gunicorn as compose.yaml runs it: production, one trusted proxy."""
    return start_server(APP_ENV="production", TRUSTED_PROXY_COUNT="1")


@pytest.fixture(scope="module")
def proxy(start_nginx, production_app, certs):
    """nginx as shipped: plain HTTP redirects, HTTPS serves the app."""
    return start_nginx(production_app, certs=certs)


def log_in_over_https(proxy, ca_file: str, email: str):
    """Log in through the form as a browser does over HTTPS; returns the
    session and the response to the form."""
    browser = requests.Session()
    browser.verify = ca_file
    # Else a CA bundle named in the environment (REQUESTS_CA_BUNDLE) would
    # win over `verify`.
    browser.trust_env = False
    login_url = f"{proxy.url}/auth/login"
    form = browser.get(login_url)
    assert form.status_code == 200, form.text
    response = browser.post(
        login_url,
        data={
            "email": email,
            "password": PASSWORD,
            "csrf_token": csrf_token(form.text),
        },
        # Over HTTPS, Flask-WTF also wants a Referer of the same host, which
        # browsers send: the app must see the scheme and host:port the
        # browser used.
        headers={"Referer": login_url},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text
    return browser, response


def handshake(proxy, context: ssl.SSLContext) -> tuple[str, str]:
    """(TLS version, cipher) that nginx's HTTPS port agrees on with `context`."""
    with (
        socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version(), tls.cipher()[0]


def test_rendered_config_with_tls_passes_nginx_t(proxy):
    checked = proxy.test_config()
    assert checked.returncode == 0, checked.stderr


def test_login_over_https_keeps_a_secure_session_cookie(proxy, ca_file, alice):
    browser, response = log_in_over_https(proxy, ca_file, alice)
    assert "Secure" in response.headers["Set-Cookie"]
    cookies = list(browser.cookies)
    assert cookies and all(cookie.secure for cookie in cookies)
    # requests sends a Secure cookie over HTTPS only, as a browser does: the
    # login holds.
    page = browser.get(f"{proxy.url}/", allow_redirects=False)
    assert page.status_code == 200
    assert 'id="status"' in page.text


# The WebSocket clients here are websockets' asyncio ones, not the sync ones
# the other tests use: a sync client reads in a thread of its own while the
# caller's thread writes, and one ssl socket is not safe for that. Under load,
# a handshake's request was once never sent (the client's TLS connection had
# carried nothing past the TLS handshake) and the client waited out its
# timeout. asyncio's TLS runs in the one thread.
# https://github.com/python/cpython/issues/77271
def over_wss(proxy, context: ssl.SSLContext, **options):
    """`websockets.asyncio.client.connect` to /ws/chat at nginx's HTTPS port."""
    return connect(
        f"{proxy.ws_url}/ws/chat", ssl=context, proxy=None, open_timeout=10, **options
    )


def test_chat_over_wss_with_a_client_that_trusts_the_ca(
    proxy, ca_file, client_context, alice
):
    browser, _ = log_in_over_https(proxy, ca_file, alice)

    async def chat() -> dict:
        async with over_wss(
            proxy,
            client_context,
            origin=proxy.url,
            additional_headers={"Cookie": cookie_header(browser)},
            close_timeout=5,
        ) as ws:
            # The handler subscribes before it reads, so a client hears its own
            # message; an error is the hub not ready yet.
            async with asyncio.timeout(10):
                while True:
                    await ws.send(json.dumps({"text": "hello over wss"}))
                    message = json.loads(await ws.recv())
                    if message["type"] != "error":
                        return message
                    await asyncio.sleep(0.1)

    message = asyncio.run(chat())
    assert message["type"] == "message"
    assert (message["user"], message["text"]) == (alice, "hello over wss")


def test_a_client_without_the_ca_refuses_the_certificate(proxy):
    async def refused():
        async with over_wss(proxy, ssl.create_default_context()):
            pass

    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(refused())


@pytest.mark.parametrize(
    ("scheme", "status"),
    [
        # The page's own origin passes the Origin check; the login is next.
        ("https", 401),
        # The app knows the page came over HTTPS (X-Forwarded-Proto).
        ("http", 403),
    ],
)
def test_the_app_sees_the_https_origin(proxy, client_context, scheme, status):
    async def refused():
        origin = f"{scheme}://127.0.0.1:{proxy.tls_port}"
        async with over_wss(proxy, client_context, origin=origin):
            pass

    with pytest.raises(InvalidStatus) as refusal:
        asyncio.run(refused())
    assert refusal.value.response.status_code == status


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",  # the app, 200
        "/no-such-page",  # the app, 404
        "/static/style.css",  # nginx itself
    ],
)
def test_every_https_response_has_the_hsts_header(proxy, ca_file, path):
    response = requests.get(f"{proxy.url}{path}", verify=ca_file, timeout=5)
    # Once, exactly: requests joins repeated headers with ", ".
    assert response.headers["Strict-Transport-Security"] == HSTS


@pytest.mark.parametrize(
    "path", ["/", "/auth/login?next=%2F", "/ws/chat", "/static/style.css"]
)
def test_plain_http_redirects_to_the_same_url_over_https(proxy, path):
    response = requests.get(
        f"{proxy.http_url}{path}", allow_redirects=False, timeout=30
    )
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://127.0.0.1:{proxy.tls_port}{path}"
    assert "Strict-Transport-Security" not in response.headers


def test_a_form_posted_over_plain_http_is_redirected_not_served(proxy, alice):
    response = requests.post(
        f"{proxy.http_url}/auth/login",
        data={"email": alice, "password": PASSWORD},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 301
    assert response.headers["Location"] == (
        f"https://127.0.0.1:{proxy.tls_port}/auth/login"
    )


def test_healthz_answers_over_plain_http(proxy):
    response = requests.get(
        f"{proxy.http_url}/healthz", allow_redirects=False, timeout=5
    )
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_acme_challenges_are_served_over_plain_http(proxy):
    """certbot --webroot writes the token, Let's Encrypt fetches it on port 80."""
    token = "t0ken-from-certbot"  # noqa: S105 (an ACME challenge's name)
    challenges = proxy.acme_webroot / ".well-known" / "acme-challenge"
    challenges.mkdir(parents=True, exist_ok=True)
    (challenges / token).write_text("t0ken-from-certbot.key-thumbprint")

    url = f"{proxy.http_url}/.well-known/acme-challenge/{token}"
    response = requests.get(url, allow_redirects=False, timeout=5)
    assert response.status_code == 200
    assert response.text == "t0ken-from-certbot.key-thumbprint"
    # Nothing else under .well-known stays on plain HTTP.
    other = requests.get(
        f"{proxy.http_url}/.well-known/security.txt", allow_redirects=False, timeout=30
    )
    assert other.status_code == 301


def test_redirect_to_port_443_names_no_port(start_nginx, production_app, certs):
    proxy = start_nginx(production_app, certs=certs, NGINX_HTTPS_PORT="443")
    response = requests.get(
        f"{proxy.http_url}/auth/login", allow_redirects=False, timeout=30
    )
    assert response.headers["Location"] == "https://127.0.0.1/auth/login"


def test_tls_1_3_by_default_and_1_2_with_a_mozilla_cipher(proxy, ca_file):
    assert handshake(proxy, context_trusting(ca_file))[0] == "TLSv1.3"
    tls_1_2 = context_trusting(ca_file, version=ssl.TLSVersion.TLSv1_2)
    version, cipher = handshake(proxy, tls_1_2)
    assert version == "TLSv1.2"
    assert cipher in MOZILLA_TLS_1_2_CIPHERS


def test_tls_1_2_without_a_mozilla_cipher_is_refused(proxy, ca_file):
    """CBC suites, which nginx's default list (HIGH:!aNULL:!MD5) would take."""
    cbc_only = context_trusting(
        ca_file,
        version=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA",
    )
    with pytest.raises(ssl.SSLError) as refused:
        handshake(proxy, cbc_only)
    # nginx's alert, not the client giving up before asking.
    assert refused.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_1_1_is_refused(proxy, ca_file):
    # Security level 0: OpenSSL 3 clients otherwise refuse TLS 1.1 themselves.
    tls_1_1 = context_trusting(
        ca_file, version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0"
    )
    with pytest.raises(ssl.SSLError) as refused:
        handshake(proxy, tls_1_1)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
