"""Accounts: the CLI, the forms (with CSRF) and bearer tokens."""

import statistics
import time
from urllib.parse import urlencode

import pytest
import requests

from .conftest import (
    PASSWORD,
    bearer_token,
    csrf_token,
    log_in,
    run_flask,
    submit_form,
)


def test_users_create_refuses_a_duplicate_with_one_line(migrated, alice):
    result = run_flask(migrated, "users", "create", alice, "--password", PASSWORD)
    assert result.returncode == 1
    assert result.stderr == f"Error: a user with the email {alice} already exists\n"


def test_users_create_refuses_a_short_password(migrated):
    result = run_flask(
        migrated, "users", "create", "c@example.com", "--password", "short"
    )
    assert result.returncode == 1
    assert result.stderr == ("Error: the password must be at least 8 characters long\n")


def test_users_create_prompts_for_the_password(migrated):
    typed = f"{PASSWORD}\n{PASSWORD}\n"
    result = run_flask(migrated, "users", "create", "prompted@example.com", input=typed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("created user prompted@example.com\n")


def test_demo_page_redirects_anonymous_visitors_to_login(server):
    response = requests.get(f"{server.url}/", allow_redirects=False, timeout=30)
    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login?next=/"


def test_demo_page_has_the_contract_ids(server, alice):
    page = log_in(server, alice).get(f"{server.url}/")
    assert page.status_code == 200
    for element_id in ("chat-form", "chat-input", "chat-log", "status"):
        assert f'id="{element_id}"' in page.text


def test_register_creates_an_account_and_logs_in(server):
    browser = requests.Session()
    fields = {
        "email": "New.User@Example.com",
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    response = submit_form(browser, f"{server.url}/auth/register", fields)
    assert response.status_code == 302
    assert browser.get(f"{server.url}/").status_code == 200
    assert bearer_token(server, "new.user@example.com")


def test_register_refuses_a_taken_email(server, alice):
    fields = {"email": alice, "password": PASSWORD, "confirm": PASSWORD}
    response = submit_form(requests.Session(), f"{server.url}/auth/register", fields)
    assert response.status_code == 400
    assert f"A user with the email {alice} already exists." in response.text


def test_login_without_csrf_token_is_refused(server, alice):
    response = requests.post(
        f"{server.url}/auth/login",
        data={"email": alice, "password": PASSWORD},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 400


def test_login_with_a_wrong_password_is_refused(server, alice):
    fields = {"email": alice, "password": "wrong"}
    response = submit_form(requests.Session(), f"{server.url}/auth/login", fields)
    assert response.status_code == 400
    assert "Wrong email or password." in response.text


@pytest.mark.parametrize(
    ("next_page", "location"),
    [
        # Paths of this site are kept.
        ("/", "/"),
        ("/?a=b", "/?a=b"),
        ("/some/path", "/some/path"),
        # Browsers read each of these as another host, at once or once the
        # target is decoded again.
        ("//evil.example", "/"),
        ("///evil.example", "/"),
        ("////evil.example/phish", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("%2F%2Fevil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("/%252F%252Fevil.example", "/"),
        ("/%5Cevil.example", "/"),
        # Schemes and hosts, this site's own included.
        ("http:evil.example", "/"),
        ("http://evil.example/", "/"),
        ("https://evil.example/phish", "/"),
        ("https://127.0.0.1/", "/"),
        ("javascript:alert(1)", "/"),
        ("some/path", "/"),
        ("", "/"),
    ],
    ids=repr,
)
def test_login_redirects_only_to_paths_of_this_site(server, alice, next_page, location):
    response = submit_form(
        requests.Session(),
        f"{server.url}/auth/login",
        {"email": alice, "password": PASSWORD},
        target=f"{server.url}/auth/login?{urlencode({'next': next_page})}",
    )
    assert response.status_code == 302
    assert response.headers["Location"] == location


def test_token_for_wrong_credentials_is_401_json(server, alice):
    response = requests.post(
        f"{server.url}/auth/token", auth=(alice, "wrong"), timeout=30
    )
    assert response.status_code == 401
    assert response.json() == {"error": "invalid email or password"}
    assert requests.post(f"{server.url}/auth/token", timeout=30).status_code == 401


def test_token_response_says_when_it_expires(server, alice):
    response = requests.post(
        f"{server.url}/auth/token", auth=(alice, PASSWORD), timeout=30
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_in"}
    assert body["expires_in"] == 3600


# Tries of each kind, taken in turns so that a slow moment of the machine
# weighs on both alike.
TIMING_TRIES = 15


def timed(attempt) -> float:
    started = time.perf_counter()
    attempt()
    return time.perf_counter() - started


def median_ratio(unknown_email, wrong_password) -> float:
    """How much longer the median unknown email takes than the median wrong
    password (below 1: shorter)."""
    for attempt in (unknown_email, wrong_password):  # first calls warm up
        attempt()
    unknown, wrong = [], []
    for _ in range(TIMING_TRIES):
        unknown.append(timed(unknown_email))
        wrong.append(timed(wrong_password))
    return statistics.median(unknown) / statistics.median(wrong)


def test_token_takes_as_long_for_an_unknown_email_as_for_a_wrong_password(
    server, alice
):
    client = requests.Session()

    def attempt(email: str):
        def post() -> None:
            response = client.post(f"{server.url}/auth/token", auth=(email, "wrong!"))
            assert response.status_code == 401

        return post

    ratio = median_ratio(attempt("nobody@example.com"), attempt(alice))
    assert 0.5 <= ratio <= 2, f"an unknown email takes {ratio:.2f} times as long"


def test_login_takes_as_long_for_an_unknown_email_as_for_a_wrong_password(
    server, alice
):
    browser = requests.Session()
    token = csrf_token(browser.get(f"{server.url}/auth/login").text)

    def attempt(email: str):
        def post() -> None:
            fields = {"email": email, "password": "wrong!", "csrf_token": token}
            response = browser.post(f"{server.url}/auth/login", data=fields)
            assert response.status_code == 400
            assert "Wrong email or password." in response.text

        return post

    ratio = median_ratio(attempt("nobody@example.com"), attempt(alice))
    assert 0.5 <= ratio <= 2, f"an unknown email takes {ratio:.2f} times as long"
