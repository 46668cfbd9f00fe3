"""The demo page in headless Chromium over HTTPS, through nginx as shipped
(tests/nginx.py with a certificate pair) in front of the app in production:
the session cookie is Secure, so only HTTPS keeps the login.

The certificate comes from a throwaway CA (trustme) that Chromium does not
know, so the browser context ignores certificate errors; tests/test_tls.py's
clients trust that CA and check the certificate for real. Like
tests/test_browser.py, this runs the machine's Chromium (Debian: apt-get
install chromium).
"""

from collections.abc import Iterator

import pytest

from .conftest import CALL_FAILED, require
from .nginx import write_certificates
from .test_browser import (
    EXPECT_TIMEOUT,
    chat_line,
    chromium,  # noqa: F401 (a fixture)
    chromium_executable,  # noqa: F401 (an autouse fixture: skips without a browser)
    expect_status,
    join_chat,
    log_in,
    save_screenshots,
    say,
)

try:
    from playwright.sync_api import Page, expect
except ImportError:  # in the dev extra; `chromium_executable` says so
    expect = None

try:
    import trustme
except ImportError:  # in the dev extra; the `certs` fixture says so
    trustme = None

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    require(
        trustme is not None,
        "trustme is not installed; it is in the dev extra: pip install -e '.[dev]'",
    )
    return write_certificates(trustme.CA(), tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def proxy(start_server, start_nginx, certs):
    """gunicorn as compose.yaml runs it (production, one trusted proxy), with
    nginx as shipped in front."""
    app = start_server(APP_ENV="production", TRUSTED_PROXY_COUNT="1")
    return start_nginx(app, certs=certs)


@pytest.fixture
def page(chromium, request) -> Iterator["Page"]:  # noqa: F811 (the fixture)
    """A page in a context of its own that accepts the test certificate; its
    screenshot is saved in test-artifacts/ if the test fails."""
    context = chromium.new_context(ignore_https_errors=True)
    context.set_default_timeout(EXPECT_TIMEOUT)
    yield context.new_page()
    if request.node.stash.get(CALL_FAILED, False):
        save_screenshots(request.node.name, [context])
    context.close()


def test_demo_page_over_https_logs_in_and_chats(proxy, page, alice):
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    # Typed without a scheme, an address starts on plain HTTP: nginx moves it.
    page.goto(f"{proxy.http_url}/auth/login")
    expect(page).to_have_url(f"{proxy.url}/auth/login")

    log_in(page, proxy.url, alice)
    cookies = page.context.cookies()
    assert cookies and all(cookie["secure"] for cookie in cookies), cookies
    expect_status(page, "connected")
    join_chat(page, alice)
    say(page, "hello over https")
    expect(chat_line(page, alice, "hello over https")).to_be_visible()

    # The page picked wss:// from its own https: address.
    assert sockets and all(
        url.startswith(f"wss://127.0.0.1:{proxy.tls_port}/") for url in sockets
    )
