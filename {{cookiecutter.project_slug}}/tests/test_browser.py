"""The demo page in a real browser: headless Chromium, driven by Playwright.
{%- if cookiecutter.use_docker == "y" %}

The browser talks to nginx, run from the generated deploy/nginx config (see
nginx.py), in front of gunicorn: the stack compose.yaml runs.
{%- else %}

The browser talks to gunicorn directly: this project has no nginx config.
{%- endif %}

Playwright launches the machine's Chromium (Debian: apt-get install chromium);
`playwright install` is not needed. Without a browser, deselect these tests:
pytest -m "not browser". When one fails, screenshots of its pages are saved
in test-artifacts/.
"""

import itertools
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import CALL_FAILED, PASSWORD, PROJECT_ROOT, Server, require, wait_until
{%- if cookiecutter.use_docker == "y" %}
from .nginx import Nginx
{%- endif %}

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # in the dev extra; `chromium_executable` says so
    sync_playwright = None

pytestmark = pytest.mark.browser

# Debian's and Ubuntu's names, then Google Chrome's, which Playwright drives too.
CHROMIUM_NAMES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
)
# No sandbox (it needs user namespaces, which containers and CI jobs often
# lack), no GPU, and nothing that calls home: updates, sync, first-run pages.
# https://peter.sh/experiments/chromium-command-line-switches/
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
# Milliseconds Playwright waits for a page to show what a test expects.
EXPECT_TIMEOUT = 10_000
# Seconds a restarted app and the page's backoff may take together before the
# page is back: its wait is drawn below a ceiling that doubles to 30 s.
RECONNECT_TIMEOUT = 45
{%- if cookiecutter.use_docker == "y" %}
# gunicorn as compose.yaml runs it: behind one trusted proxy.
APP_SETTINGS = {"TRUSTED_PROXY_COUNT": "1"}
{%- else %}
APP_SETTINGS: dict[str, str] = {}
{%- endif %}


# Session scope and autouse put it before the session's other fixtures (the
# database, the users), so a machine without a browser skips at once.
@pytest.fixture(scope="session", autouse=True)
def chromium_executable() -> str:
    require(
        sync_playwright is not None,
        "playwright is not installed; it is in the dev extra: pip install -e '.[dev]'",
    )
    executable = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    require(
        executable is not None,
        "Chromium is not installed (Debian: apt-get install chromium)",
    )
    return executable


@pytest.fixture(scope="module")
def chromium(chromium_executable) -> Iterator["Browser"]:
    expect.set_options(timeout=EXPECT_TIMEOUT)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@dataclass
class Stack:
    """The service as a browser reaches it."""

    app: Server
    start_server: Callable[..., Server]
{%- if cookiecutter.use_docker == "y" %}
    proxy: Nginx

    @property
    def url(self) -> str:
        return self.proxy.url
{%- else %}

    @property
    def url(self) -> str:
        return self.app.url
{%- endif %}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def stop_app(self) -> None:
        self.app.stop()

    def start_app_again(self) -> None:
        """A new gunicorn on the stopped one's port, so what pointed at the old
        one (nginx's upstream) reaches the new one."""
        self.app = self.start_server(port=self.app.port, **APP_SETTINGS)
{%- if cookiecutter.use_docker == "y" %}


@pytest.fixture(scope="module")
def start_stack(start_server, start_nginx) -> Callable[[], Stack]:
    """Start gunicorn with nginx in front of it."""

    def start() -> Stack:
        app = start_server(**APP_SETTINGS)
        return Stack(app, start_server, start_nginx(app))

    return start
{%- else %}


@pytest.fixture(scope="module")
def start_stack(start_server) -> Callable[[], Stack]:
    """Start gunicorn on its own."""

    def start() -> Stack:
        return Stack(start_server(**APP_SETTINGS), start_server)

    return start
{%- endif %}


@pytest.fixture(scope="module")
def stack(start_stack) -> Stack:
    """The stack shared by the tests that leave it running."""
    return start_stack()


@pytest.fixture
def open_page(chromium, request) -> Iterator[Callable[[], "Page"]]:
    """Open a page in a browser context of its own: its own cookies, so each
    page can be another user. If the test fails, every page's screenshot is
    saved in test-artifacts/."""
    contexts = []

    def open_() -> "Page":
        context = chromium.new_context()
        context.set_default_timeout(EXPECT_TIMEOUT)
        contexts.append(context)
        return context.new_page()

    yield open_
    if request.node.stash.get(CALL_FAILED, False):
        save_screenshots(request.node.name, contexts)
    for context in contexts:
        context.close()


def save_screenshots(test_name: str, contexts) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "_", test_name)
    pages = [page for context in contexts for page in context.pages]
    for number, page in enumerate(pages, start=1):
        path = ARTIFACTS / f"{stem}-{number}.png"
        try:
            page.screenshot(path=path, full_page=True)
        except Exception as error:  # a crashed page must not hide the failure
            print(f"no screenshot of page {number} ({page.url}): {error}")
        else:
            print(f"screenshot of {page.url}: {path}")


def register(page: "Page", base_url: str, email: str) -> None:
    page.goto(f"{base_url}/auth/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Repeat the password").fill(PASSWORD)
    page.get_by_role("button", name="Create the account").click()
    expect(page).to_have_url(f"{base_url}/")


def log_in(page: "Page", base_url: str, email: str) -> None:
    page.goto(f"{base_url}/auth/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{base_url}/")


def log_out(page: "Page", base_url: str) -> None:
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{base_url}/auth/login")


def expect_status(page: "Page", status: str, timeout: float | None = None) -> None:
    expect(page.locator("#status")).to_have_text(status, timeout=timeout)


def say(page: "Page", text: str) -> None:
    chat_input = page.locator("#chat-input")
    chat_input.fill(text)
    chat_input.press("Enter")


def chat_line(page: "Page", email: str, text: str):
    """The line in the page's chat log for `text` from `email`."""
    return page.locator("#chat-log li.received", has_text=f"{email}: {text}")


def join_chat(page: "Page", email: str) -> None:
    """Say something until the page hears it back.

    The page shows `connected` when the 101 arrives, a moment before the server
    subscribes the socket to the chat; a page hears its own line only once
    subscribed, and from then on it hears everyone's.
    """
    deadline = time.monotonic() + RECONNECT_TIMEOUT
    for attempt in itertools.count(1):
        marker = f"joining (attempt {attempt})"
        say(page, marker)
        try:
            expect(chat_line(page, email, marker)).to_be_visible(timeout=2_000)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_new_user_registers_logs_in_and_chats(stack, open_page):
    email = f"browser-{secrets.token_hex(4)}@example.com"
    page = open_page()
    register(page, stack.url, email)
    log_out(page, stack.url)

    log_in(page, stack.url, email)
    expect_status(page, "connected")
    join_chat(page, email)
    say(page, "hello from a real browser")
    expect(chat_line(page, email, "hello from a real browser")).to_be_visible()


def test_another_user_receives_the_chat_line(stack, open_page, alice, bob):
    alice_page, bob_page = open_page(), open_page()
    for page, email in ((alice_page, alice), (bob_page, bob)):
        log_in(page, stack.url, email)
        expect_status(page, "connected")
        join_chat(page, email)

    say(alice_page, "hi bob, from alice's browser")
    expect(chat_line(bob_page, alice, "hi bob, from alice's browser")).to_be_visible()


def test_chat_line_with_markup_shows_as_text(stack, open_page, alice, bob):
    """Received text is written with textContent: markup in a message creates
    no element, so its script never runs."""
    markup = '<img src=x onerror="window.injected = true">'
    alice_page, bob_page = open_page(), open_page()
    for page, email in ((alice_page, alice), (bob_page, bob)):
        log_in(page, stack.url, email)
        expect_status(page, "connected")
        join_chat(page, email)

    say(alice_page, markup)
    for page in (alice_page, bob_page):
        line = chat_line(page, alice, markup)
        expect(line).to_be_visible()
        assert line.text_content().endswith(f"{alice}: {markup}")
        expect(page.locator("#chat-log img")).to_have_count(0)
        assert page.evaluate("window.injected") is None


# Each socket the page opens, and how it ends, in window.socketEvents: the
# page shows neither close codes nor new sockets. The page's own WebSocket
# still does all the work; like every init script, this one runs before the
# page's scripts and is not subject to its Content-Security-Policy.
RECORD_SOCKETS = """(() => {
  const PageWebSocket = window.WebSocket;
  window.socketEvents = [];
  const record = (path, event, code) => window.socketEvents.push({ path, event, code });
  window.WebSocket = class extends PageWebSocket {
    constructor(url, ...options) {
      super(url, ...options);
      const path = new URL(url).pathname;
      this.addEventListener("open", () => record(path, "open", null));
      this.addEventListener("close", (event) => record(path, "close", event.code));
    }
  };
})();"""

# True once each of the demo's sockets was closed with `code` and a socket to
# the same path has opened since.
CONNECTED = 'document.getElementById("status").textContent === "connected"'
REOPENED_AFTER = """(code) => ["/ws/echo", "/ws/chat"].every((path) => {
  const events = window.socketEvents.filter((event) => event.path === path);
  const closed = events.findIndex((e) => e.event === "close" && e.code === code);
  return closed >= 0 && events.slice(closed + 1).some((e) => e.event === "open");
})"""


def record_sockets(page: "Page") -> None:
    page.add_init_script(RECORD_SOCKETS)
    # The page's clock runs as usual, but the tests can move it on: see
    # `skip_retry_waits`.
    page.clock.install()


def expect_reopened_after(page: "Page", code: int) -> None:
    page.wait_for_function(REOPENED_AFTER, arg=code, timeout=RECONNECT_TIMEOUT * 1000)


# The longest wait between two tries (app.js's RETRY_MAX_CEILING_MS).
LONGEST_RETRY_WAIT_MS = 30_000


def skip_retry_waits(page: "Page", back: str) -> None:
    """Move the page's clock past each wait before its next try, until the
    page is `back` (a JavaScript condition), instead of waiting up to 30 s a
    try: the tries are the page's own, only the waits between them are cut
    short. The waits themselves are checked by the test of the retry waits."""
    deadline = time.monotonic() + RECONNECT_TIMEOUT
    while not page.evaluate(back):
        assert time.monotonic() < deadline, f"the page is not back: {back}"
        page.clock.fast_forward(LONGEST_RETRY_WAIT_MS)
        time.sleep(0.2)  # the try itself takes real time: a handshake


def test_page_reconnects_by_itself_after_the_app_restarts(
    start_stack, open_page, alice
):
    stack = start_stack()  # its own: this test stops the app
    page = open_page()
    record_sockets(page)
    log_in(page, stack.url, alice)
    expect_status(page, "connected")

    stack.stop_app()
    expect_status(page, "disconnected")
    stack.start_app_again()
    skip_retry_waits(page, CONNECTED)
    # The stopping app closed both sockets with 1001; new ones are open.
    expect_reopened_after(page, 1001)

    join_chat(page, alice)
    say(page, "back after the restart")
    expect(chat_line(page, alice, "back after the restart")).to_be_visible()


def test_page_reconnects_by_itself_after_the_app_reloads(start_stack, open_page, alice):
    """A reload (SIGHUP: new workers, the old ones leave, as on a deploy)
    closes the page's sockets with 1001 while the app stays up; the page opens
    new ones to the new workers by itself."""
    stack = start_stack()  # its own: this test reloads the app
    page = open_page()
    record_sockets(page)
    log_in(page, stack.url, alice)
    expect_status(page, "connected")
    join_chat(page, alice)

    stack.app.process.send_signal(signal.SIGHUP)
    skip_retry_waits(page, f"({REOPENED_AFTER})(1001)")
    expect_status(page, "connected")
    join_chat(page, alice)
    say(page, "back after the reload")
    expect(chat_line(page, alice, "back after the reload")).to_be_visible()


# `count` draws of the page's retry wait after each number of failed attempts.
DRAW_RETRY_DELAYS = """(count) => Array.from({ length: 10 }, (_, attempt) => ({
  ceiling: retryCeiling(attempt),
  delays: Array.from({ length: count }, () => retryDelay(attempt)),
}))"""
DRAWS = 1000


def test_retry_waits_are_drawn_from_zero_to_a_doubling_ceiling(stack, open_page, alice):
    """Full jitter: a wait anywhere between 0 and the ceiling, which doubles
    from 0.5 s to at most 30 s. Half the draws fall in the lower half of the
    range (none would, were they drawn from the upper half only)."""
    page = open_page()
    log_in(page, stack.url, alice)  # the demo page, which loads app.js
    # The page's URL changes before its scripts have run: wait for app.js.
    page.wait_for_function("typeof retryDelay === 'function'")
    draws = page.evaluate(DRAW_RETRY_DELAYS, DRAWS)
    for attempt, draw in enumerate(draws):
        ceiling = min(30_000, 500 * 2**attempt)
        assert draw["ceiling"] == ceiling
        assert all(0 <= delay <= ceiling for delay in draw["delays"])
        lower_half = sum(delay < ceiling / 2 for delay in draw["delays"])
        # 500 expected; outside these bounds by chance about once in 10^50.
        assert DRAWS // 4 < lower_half < DRAWS * 3 // 4, (attempt, lower_half)
        assert min(draw["delays"]) < ceiling / 10
    # After a 1001, the first retry's ceiling is 4 s.
    assert page.evaluate("retryCeiling(GOING_AWAY_FIRST_ATTEMPT)") == 4_000


@contextmanager
def another_site(content: str = "<p>Another site") -> Iterator[str]:
    """A page of another origin: same host, another port, as a site a user
    might visit. The browser's cookies for 127.0.0.1 go with its requests,
    whatever the port, so only the Origin check can refuse its socket."""

    class AnotherSite(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"<!doctype html><title>Another site</title>{content}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass  # keep the test's output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), AnotherSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


# Open a WebSocket from the page and report how it went.
OPEN_SOCKET = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  const outcome = { opened: false, error: false };
  ws.onopen = () => { outcome.opened = true; ws.close(); };
  ws.onerror = () => { outcome.error = true; };
  ws.onclose = (event) => resolve({ ...outcome, code: event.code });
})"""


# What Chromium tells Playwright about a handshake answered 403; the page's
# own script never learns the status.
HANDSHAKE_REFUSED_WITH_403 = (
    "Error during WebSocket handshake: Unexpected response code: 403"
)


def refused_handshakes(server: Server, path: str, status: int) -> int:
    """How many handshakes on `path` the app's access log shows answered `status`."""
    return len(re.findall(rf'"GET {path} HTTP/1\.\d" {status} ', server.log()))


def test_page_from_another_origin_cannot_open_the_socket(stack, open_page, alice):
    page = open_page()
    log_in(page, stack.url, alice)
    expect_status(page, "connected")  # the same browser, from the right origin
    refused_before = refused_handshakes(stack.app, "/ws/chat", 403)

    with another_site() as url:
        foreign_page = page.context.new_page()
        foreign_page.goto(url)
        handshake_errors = []

        def record_errors(ws) -> None:
            ws.on("socketerror", lambda error: handshake_errors.append(error))

        foreign_page.on("websocket", record_errors)
        outcome = foreign_page.evaluate(OPEN_SOCKET, f"{stack.ws_url}/ws/chat")

    # A refused handshake reaches the page only as an error and close code 1006;
    # the browser tells Playwright the status, and the app logs it.
    assert outcome == {"opened": False, "error": True, "code": 1006}
    wait_for_events(page, lambda: handshake_errors, "the refused handshake")
    assert handshake_errors == [HANDSHAKE_REFUSED_WITH_403]
    wait_until(
        lambda: refused_handshakes(stack.app, "/ws/chat", 403) > refused_before,
        5,
        "a 403 in the app log",
    )


# The page's Content-Security-Policy violations, as `securitypolicyviolation`
# events, reported to the test. Init scripts and exposed functions come from
# Playwright, not the page, so the policy does not stop them; this one runs in
# every page the context loads, before the page's own scripts.
REPORT_VIOLATIONS = """document.addEventListener("securitypolicyviolation", (event) => {
  window.reportViolation(`${event.effectiveDirective} ${event.blockedURI}`);
}, true);"""

# An inline script, as markup slipped into the page would bring; true if it ran.
RUN_INLINE_SCRIPT = """() => {
  const script = document.createElement("script");
  script.textContent = "window.inlineScriptRan = true;";
  document.head.append(script);
  return window.inlineScriptRan === true;
}"""


def watch_policy_violations(page: "Page") -> list[str]:
    """Collect what the policy blocks on `page`, from the moment it is called:
    the `securitypolicyviolation` events, and Chromium's console errors about
    the policy (some blocks, such as framing, only log one)."""
    violations = []
    page.expose_function("reportViolation", lambda text: violations.append(text))
    page.add_init_script(REPORT_VIOLATIONS)

    def on_console(message) -> None:
        if "Content Security Policy" in message.text:
            violations.append(f"console: {message.text}")

    page.on("console", on_console)
    return violations


def wait_for_events(page: "Page", found: Callable[[], bool], what: str) -> None:
    """Let Playwright deliver the page's events until `found()` is true."""
    deadline = time.monotonic() + 5
    while not found():
        assert time.monotonic() < deadline, f"{what}: not within 5 s"
        page.wait_for_timeout(100)


def test_pages_work_under_the_content_security_policy(stack, open_page):
    """Register, log out, log in, echo and chat: none of it trips the policy,
    which the browser does enforce (an inline script is blocked and seen)."""
    email = f"policy-{secrets.token_hex(4)}@example.com"
    page = open_page()
    violations = watch_policy_violations(page)
    register(page, stack.url, email)
    log_out(page, stack.url)
    log_in(page, stack.url, email)
    expect_status(page, "connected")

    echo_input = page.locator("#echo-input")
    echo_input.fill("echoed under the policy")
    echo_input.press("Enter")
    expect(page.locator("#echo-log li.received")).to_have_text(
        "< echoed under the policy"
    )
    join_chat(page, email)
    say(page, "chatting under the policy")
    expect(chat_line(page, email, "chatting under the policy")).to_be_visible()
    page.wait_for_timeout(200)  # lets Playwright deliver pending events
    assert violations == []

    # Proof that the watch works and the policy holds: the script is refused,
    # and both the event and the console say so.
    assert page.evaluate(RUN_INLINE_SCRIPT) is False
    wait_for_events(page, lambda: len(violations) >= 2, "the blocked script reported")
    assert "script-src-elem inline" in violations
    assert any(v.startswith("console: ") and "script-src" in v for v in violations)


def test_another_site_cannot_frame_the_demo_page(stack, open_page, alice):
    """Clickjacking: a site that frames the demo page of a logged-in user gets
    the browser's error page in the frame, not the demo page."""
    page = open_page()
    log_in(page, stack.url, alice)
    expect_status(page, "connected")

    framing_page = page.context.new_page()
    violations = watch_policy_violations(framing_page)
    with another_site(f'<iframe src="{stack.url}/"></iframe>') as url:
        framing_page.goto(url)  # returns once the frame has loaded too
        frame = framing_page.main_frame.child_frames[0]
        # Chromium shows its own error page in place of a framed page it refuses.
        assert frame.url == "chrome-error://chromewebdata/"
        expect(framing_page.frame_locator("iframe").locator("#status")).to_have_count(0)
    wait_for_events(framing_page, lambda: violations, "the refused frame reported")
    assert len(violations) == 1
    assert "frame-ancestors 'none'" in violations[0]
