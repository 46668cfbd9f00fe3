"""Logging out and changing a password revoke: every session cookie, bearer
token and open socket of the user issued before stops working, wherever it is;
only the browser that changed the password carries on."""

{% if cookiecutter.broadcast == "redis" -%}
import re
{% endif -%}
import time
from contextlib import ExitStack

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from {{ cookiecutter.package_name }}.realtime.revocations import RECHECK_EVERY

from .conftest import (
    PASSWORD,
    bearer_token,
    echoes,
    log_in,
    open_socket,
    submit_form,
)

NEW_PASSWORD = "a new and longer passphrase"  # noqa: S105 (a test account's)
REVOKED = (1008, "credentials revoked")
# What the hub carries closes sockets in milliseconds; well under
# RECHECK_EVERY, so that the database check cannot pass for it.
PROMPTLY = 3.0
# The database check of every worker, for what the hub cannot carry.
BY_THE_RECHECK = RECHECK_EVERY + 10


def copy_of_cookies(browser: requests.Session) -> requests.Session:
    """Another client with the browser's cookies as they are now: a stolen or
    forgotten copy that outlives what the browser itself does next."""
    copy = requests.Session()
    copy.cookies.update(browser.cookies)
    return copy


def log_out(server, browser: requests.Session) -> None:
    # The logout button is in the header of the demo page, with its CSRF token.
    response = submit_form(
        browser, f"{server.url}/", {}, target=f"{server.url}/auth/logout"
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login"


def change_password_on_the_page(server, browser: requests.Session) -> None:
    fields = {
        "current_password": PASSWORD,
        "password": NEW_PASSWORD,
        "confirm": NEW_PASSWORD,
    }
    response = submit_form(browser, f"{server.url}/auth/password", fields)
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == "/"


def set_password_with_the_cli(runner, email: str) -> None:
    result = runner.invoke(
        args=["users", "set-password", email, "--password", NEW_PASSWORD]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == f"changed the password of {email}; logged out everywhere\n"


def handshake_status(server, **credentials) -> int:
    """101 when the socket opens, else the status of the refusal."""
    try:
        with open_socket(server, "/ws/echo", **credentials):
            return 101
    except InvalidStatus as refusal:
        return refusal.response.status_code


def assert_locked_out(server, *, browser=None, token=None) -> None:
    """The cookie and the token of before answer as if there were none."""
    if browser is not None:
        page = browser.get(f"{server.url}/", allow_redirects=False)
        assert page.status_code == 302
        assert page.headers["Location"] == "/auth/login?next=/"
        assert handshake_status(server, browser=browser) == 401
    if token is not None:
        response = requests.get(
            f"{server.url}/", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        assert response.status_code == 401
        assert response.json() == {"error": "authentication required"}
        assert handshake_status(server, token=token) == 401


def open_sockets(stack: ExitStack, server, browser, token) -> list:
    """An echo and a chat socket by the browser's cookie, and the same by token."""
    return [
        stack.enter_context(open_socket(server, path, **credentials))
        for path in ("/ws/echo", "/ws/chat")
        for credentials in ({"browser": browser}, {"token": token})
    ]


def close_of(ws, deadline: float) -> tuple[int, str]:
    """(code, reason) of the close the server sends `ws` before `deadline`
    (a time.monotonic()); what it sends before that is passed over."""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            ws.recv(timeout=remaining)
        except TimeoutError:
            break
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return 1006, "no close frame"
            return closed.rcvd.code, closed.rcvd.reason
    pytest.fail("the socket was still open at the deadline")


def test_a_revoked_credential_is_refused_at_once_by_every_worker(
    start_server, server_runner, make_user
):
    """Handshakes read the credential version from the database each time
    (auth/loaders.py), so no worker keeps admitting a revoked session or
    token, not even for a moment, whether or not the hub told it."""
    server = start_server(WEB_CONCURRENCY="2")
    email = make_user()
    browser = log_in(server, email)
    token = bearer_token(server, email)
    # Both workers (most likely) admit them first.
    for _ in range(6):
        assert handshake_status(server, browser=browser) == 101
        assert handshake_status(server, token=token) == 101
    set_password_with_the_cli(server_runner, email)
    for _ in range(6):
        assert handshake_status(server, browser=browser) == 401
        assert handshake_status(server, token=token) == 401


def assert_all_revoked(sockets: list, within: float) -> None:
    deadline = time.monotonic() + within
    closes = [close_of(ws, deadline) for ws in sockets]
    assert closes == [REVOKED] * len(sockets)


def test_logout_voids_the_old_cookie_for_pages_and_handshakes(server, make_user):
    browser = log_in(server, make_user())
    old_cookie = copy_of_cookies(browser)
    assert old_cookie.get(f"{server.url}/").status_code == 200
    log_out(server, browser)
    assert_locked_out(server, browser=old_cookie)


def test_logout_voids_every_token_and_every_other_session(server, make_user):
    email = make_user()
    token = bearer_token(server, email)
    elsewhere = log_in(server, email)
    log_out(server, log_in(server, email))
    assert_locked_out(server, browser=elsewhere, token=token)
    # Logging in again gives credentials that work.
    assert handshake_status(server, token=bearer_token(server, email)) == 101
    assert handshake_status(server, browser=log_in(server, email)) == 101


def test_logout_closes_the_sockets_opened_before_it(server, bob, make_user):
    email = make_user()
    browser = log_in(server, email)
    with ExitStack() as stack:
        sockets = open_sockets(stack, server, browser, bearer_token(server, email))
        others = stack.enter_context(
            open_socket(server, "/ws/echo", token=bearer_token(server, bob))
        )
        for ws in sockets[:2]:
            assert echoes(ws)
        log_out(server, browser)
        assert_all_revoked(sockets, within=PROMPTLY)
        assert echoes(others)


def test_changing_the_password_keeps_this_browser_and_revokes_the_rest(
    server, make_user
):
    email = make_user()
    changer = log_in(server, email)
    elsewhere = log_in(server, email)
    token = bearer_token(server, email)
    with ExitStack() as stack:
        sockets = open_sockets(stack, server, elsewhere, token)
        change_password_on_the_page(server, changer)
        assert_all_revoked(sockets, within=PROMPTLY)
    assert_locked_out(server, browser=elsewhere, token=token)

    page = changer.get(f"{server.url}/")
    assert page.status_code == 200
    assert "Your password is changed" in page.text
    with open_socket(server, "/ws/echo", browser=changer) as ws:
        assert echoes(ws)
    old = requests.post(f"{server.url}/auth/token", auth=(email, PASSWORD), timeout=30)
    assert old.status_code == 401
    new_token = bearer_token(server, email, NEW_PASSWORD)
    assert handshake_status(server, token=new_token) == 101


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"current_password": "not the password"},
            "Wrong password.",
        ),
        (
            {"password": "short", "confirm": "short"},
            "Field must be at least 8 characters long.",
        ),
        (
            {"confirm": "something else entirely"},
            "The passwords differ.",
        ),
    ],
    ids=["wrong current password", "too short", "not repeated"],
)
def test_password_page_refuses_and_revokes_nothing(server, fields, error, make_user):
    email = make_user()
    browser = log_in(server, email)
    token = bearer_token(server, email)
    filled = {
        "current_password": PASSWORD,
        "password": NEW_PASSWORD,
        "confirm": NEW_PASSWORD,
        **fields,
    }
    response = submit_form(browser, f"{server.url}/auth/password", filled)
    assert response.status_code == 400
    assert f'<p class="error">{error}</p>' in response.text
    assert browser.get(f"{server.url}/", allow_redirects=False).status_code == 200
    assert handshake_status(server, token=token) == 101
    assert bearer_token(server, email)


def test_password_page_needs_a_login(client):
    response = client.get("/auth/password")
    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login?next=/auth/password"


def test_the_header_links_to_the_password_page(client, auth, user):
    auth.log_in(user)
    page = client.get("/")
    assert '<a href="/auth/password">Change password</a>' in page.text


def test_users_set_password_revokes_sessions_tokens_and_sockets(
    server, server_runner, make_user
):
    email = make_user()
    browser = log_in(server, email)
    token = bearer_token(server, email)
    with ExitStack() as stack:
        sockets = open_sockets(stack, server, browser, token)
        set_password_with_the_cli(server_runner, email)
{%- if cookiecutter.broadcast == "redis" %}
        # The command adds the revocation to the Redis stream, like the app.
        assert_all_revoked(sockets, within=PROMPTLY)
{%- else %}
        # The command cannot reach the hub in the worker's memory; the worker
        # finds the new version in the database.
        assert_all_revoked(sockets, within=BY_THE_RECHECK)
{%- endif %}
    assert_locked_out(server, browser=browser, token=token)
    assert handshake_status(server, browser=log_in(server, email, NEW_PASSWORD)) == 101


def test_users_set_password_prompts_for_the_password(runner, auth, user):
    typed = f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n"
    result = runner.invoke(args=["users", "set-password", user], input=typed)
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(
        f"changed the password of {user}; logged out everywhere\n"
    )
    assert auth.token(user, NEW_PASSWORD).status_code == 200


def test_users_set_password_refuses_an_unknown_email_with_one_line(runner):
    email = "Nobody@Example.com"
    result = runner.invoke(
        args=["users", "set-password", email, "--password", NEW_PASSWORD]
    )
    assert result.exit_code == 1
    assert result.stderr == "Error: no user has the email nobody@example.com\n"


def test_users_set_password_refuses_a_short_password_and_revokes_nothing(
    server, server_runner, make_user
):
    email = make_user()
    token = bearer_token(server, email)
    result = server_runner.invoke(
        args=["users", "set-password", email, "--password", "short"]
    )
    assert result.exit_code == 1
    assert result.stderr == "Error: the password must be at least 8 characters long\n"
    assert handshake_status(server, token=token) == 101
{%- if cookiecutter.broadcast == "redis" %}


SOCKET_OPENED = r"\[(\d+)\] \[INFO\] WebSocket /ws/\w+ opened by {}"
# Room for the sockets it takes to land on both workers of an instance.
MANY_SOCKETS = {"WS_MAX_SOCKETS_PER_USER": "60"}


@pytest.fixture(scope="module")
def instances(start_server):
    """Two instances of two workers each, on the test Redis."""
    return [start_server(WEB_CONCURRENCY="2", **MANY_SOCKETS) for _ in range(2)]


def sockets_on_every_worker(stack: ExitStack, server, email: str) -> list:
    """Sockets of every kind (echo and chat, by cookie and by token) until
    both workers hold some, as gunicorn's log says."""
    browser = log_in(server, email)
    token = bearer_token(server, email)
    opened = re.compile(SOCKET_OPENED.format(re.escape(email)))
    sockets = []
    while len(set(opened.findall(server.log()))) < 2:
        assert len(sockets) < 28, "every socket went to one worker"
        sockets += open_sockets(stack, server, browser, token)
        time.sleep(0.05)
    return sockets


@pytest.mark.parametrize("how", ["logout", "password page", "users set-password"])
def test_revocations_close_sockets_on_every_worker_and_instance(
    instances, server_runner, how, make_user
):
    first, second = instances
    email = make_user()
    with ExitStack() as stack:
        sockets = sockets_on_every_worker(stack, first, email)
        sockets += sockets_on_every_worker(stack, second, email)
        if how == "logout":
            log_out(first, log_in(first, email))
        elif how == "password page":
            change_password_on_the_page(first, log_in(first, email))
        else:
            set_password_with_the_cli(server_runner, email)
        assert_all_revoked(sockets, within=PROMPTLY)


def test_a_revocation_while_redis_is_away_still_closes_every_socket(
    start_server, start_redis, make_user
):
    redis_server = start_redis()
    server = start_server(
        REDIS_URL=redis_server.url, WEB_CONCURRENCY="2", **MANY_SOCKETS
    )
    email = make_user()
    with ExitStack() as stack:
        sockets = sockets_on_every_worker(stack, server, email)
        browser = log_in(server, email)
        redis_server.stop()
        log_out(server, browser)
        assert_all_revoked(sockets, within=BY_THE_RECHECK)
        assert "could not send the revocation of user" in server.log()
{%- endif %}
