"""Trying passwords is limited per client address and per account (429 with
Retry-After), on servers of their own with small limits.

The server trusts one proxy (TRUSTED_PROXY_COUNT=1) on loopback, so each
test plays clients at addresses of its own through X-Forwarded-For, as nginx
would send them; no two tests share an address or an account.
"""

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import PASSWORD, csrf_token, wait_until

PER_ADDRESS = 4
PER_ACCOUNT = 3
LIMITS = {
    "AUTH_LIMIT_PER_ADDRESS": f"{PER_ADDRESS}/minute",
    "AUTH_LIMIT_PER_ACCOUNT": f"{PER_ACCOUNT}/minute",
    "TRUSTED_PROXY_COUNT": "1",
}
WRONG = "not-the-password"

_addresses = (f"203.0.113.{n}" for n in itertools.count(1))


def new_address() -> str:
    return next(_addresses)


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(**LIMITS)


def ask_token(server, email: str, password: str, address: str) -> requests.Response:
    return requests.post(
        f"{server.url}/auth/token",
        auth=(email, password),
        headers={"X-Forwarded-For": address},
        timeout=30,
    )


def assert_refused_as_json(response: requests.Response) -> int:
    assert response.status_code == 429, response.text
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert response.json() == {"error": "too many attempts", "retry_after": retry_after}
    return retry_after


def test_an_address_past_its_limit_gets_429_even_with_the_right_password(
    limited, make_user
):
    victim = make_user()
    address = new_address()
    # Each try names another account, so only the address limit counts.
    for n in range(PER_ADDRESS):
        nobody = f"nobody{n}.{address}@example.com"
        assert ask_token(limited, nobody, WRONG, address).status_code == 401
    assert_refused_as_json(ask_token(limited, victim, PASSWORD, address))
    # Anyone else is served as before.
    assert ask_token(limited, victim, PASSWORD, new_address()).status_code == 200
    assert f"too many attempts at /auth/token from {address}" in limited.log()


def test_an_account_past_its_limit_gets_429_from_any_address(limited, make_user):
    victim = make_user()
    for _ in range(PER_ACCOUNT):
        assert ask_token(limited, victim, WRONG, new_address()).status_code == 401
    assert_refused_as_json(ask_token(limited, victim, PASSWORD, new_address()))
    # The email is counted as the login form would store it.
    shouted = victim.upper()
    assert_refused_as_json(ask_token(limited, shouted, PASSWORD, new_address()))
    # Other accounts are not affected.
    other = make_user()
    assert ask_token(limited, other, PASSWORD, new_address()).status_code == 200


def test_a_flood_on_one_account_checks_only_the_limits_worth_of_passwords(
    limited, make_user
):
    """40 tries at once, each from its own address: exactly PER_ACCOUNT get a
    password checked (401), every other one is refused before the hash."""
    victim = make_user()
    addresses = [new_address() for _ in range(40)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(lambda a: ask_token(limited, victim, WRONG, a), addresses)
        )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [401] * PER_ACCOUNT + [429] * (40 - PER_ACCOUNT)


def post_form(server, path: str, fields: dict, address: str) -> requests.Response:
    browser = requests.Session()
    browser.headers["X-Forwarded-For"] = address
    page = browser.get(f"{server.url}{path}", timeout=30)
    return browser.post(
        f"{server.url}{path}",
        data={**fields, "csrf_token": csrf_token(page.text)},
        allow_redirects=False,
        timeout=30,
    )


def test_the_login_form_says_when_to_try_again(limited, make_user):
    victim = make_user()
    address = new_address()
    fields = {"email": victim, "password": WRONG}
    for _ in range(PER_ACCOUNT):
        assert post_form(limited, "/auth/login", fields, address).status_code == 400
    refused = post_form(limited, "/auth/login", fields, address)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    message = f"Too many attempts; try again in {retry_after} seconds."
    assert f'<p class="flash">{message}</p>' in refused.text
    # The form again, its email kept, the password not.
    assert f'value="{victim}"' in refused.text
    assert WRONG not in refused.text


def test_showing_the_forms_is_not_counted(limited, make_user):
    user = make_user()
    address = new_address()
    for _ in range(PER_ADDRESS * 3):
        response = requests.get(
            f"{limited.url}/auth/login",
            headers={"X-Forwarded-For": address},
            timeout=30,
        )
        assert response.status_code == 200
    fields = {"email": user, "password": PASSWORD}
    assert post_form(limited, "/auth/login", fields, address).status_code == 302


def test_registering_counts_too(limited):
    address = new_address()
    for n in range(PER_ADDRESS):
        fields = {"email": f"reg{n}@example.com", "password": "short", "confirm": "x"}
        assert post_form(limited, "/auth/register", fields, address).status_code == 400
    fields = {
        "email": "reg-last@example.com",
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    refused = post_form(limited, "/auth/register", fields, address)
    assert refused.status_code == 429
    assert "Too many attempts; try again in" in refused.text
    assert "Repeat the password" in refused.text


def test_changing_the_password_counts_against_the_account(limited, make_user):
    user = make_user()
    browser = requests.Session()
    browser.headers["X-Forwarded-For"] = new_address()
    page = browser.get(f"{limited.url}/auth/login", timeout=30)
    fields = {"email": user, "password": PASSWORD, "csrf_token": csrf_token(page.text)}
    response = browser.post(
        f"{limited.url}/auth/login", data=fields, allow_redirects=False, timeout=30
    )
    assert response.status_code == 302
    wrong = {"current_password": WRONG, "password": "x" * 12, "confirm": "x" * 12}
    statuses = []
    for _ in range(PER_ACCOUNT):
        # Each from another address: only the account's count can stop it.
        browser.headers["X-Forwarded-For"] = new_address()
        page = browser.get(f"{limited.url}/auth/password", timeout=30)
        response = browser.post(
            f"{limited.url}/auth/password",
            data={**wrong, "csrf_token": csrf_token(page.text)},
            allow_redirects=False,
            timeout=30,
        )
        statuses.append(response.status_code)
    # The login itself was the account's first try.
    assert statuses == [400] * (PER_ACCOUNT - 1) + [429]
    assert "Too many attempts; try again in" in response.text


def test_after_retry_after_the_right_password_works_again(start_server, make_user):
    server = start_server(
        AUTH_LIMIT_PER_ADDRESS="2 per 3 seconds",
        AUTH_LIMIT_PER_ACCOUNT="2 per 3 seconds",
        TRUSTED_PROXY_COUNT="1",
    )
    user = make_user()
    address = new_address()
    for _ in range(2):
        assert ask_token(server, user, WRONG, address).status_code == 401
    refused = ask_token(server, user, PASSWORD, address)
    retry_after = assert_refused_as_json(refused)
    assert retry_after <= 3
    asked_at = time.monotonic()
    wait_until(
        lambda: ask_token(server, user, PASSWORD, address).status_code == 200,
        timeout=30,
        what="the limit to let the right password through",
    )
    # Not before the time it gave (allowing for the second it rounds up to).
    assert time.monotonic() - asked_at >= retry_after - 1


def test_the_log_names_the_address_not_the_password(limited, make_user):
    victim = make_user()
    address = new_address()
    secret = "s3cret-" + victim
    for _ in range(PER_ACCOUNT + 1):
        ask_token(limited, victim, secret, address)
    assert secret not in limited.log()
    refusals = r"too many attempts at /auth/token from 203\.0\.113\.\d+ "
    assert re.search(refusals, limited.log())
{%- if cookiecutter.broadcast == "redis" %}


def test_the_counts_span_workers_and_instances(start_server, start_redis, make_user):
    """Two instances of two workers each, one Redis: tries add up wherever
    they land."""
    redis = start_redis()
    first, second = (
        start_server(WEB_CONCURRENCY="2", REDIS_URL=redis.url, **LIMITS)
        for _ in range(2)
    )
    victim = make_user()
    for n in range(PER_ACCOUNT):
        server = (first, second)[n % 2]
        assert ask_token(server, victim, WRONG, new_address()).status_code == 401
    for server in (first, second):
        assert_refused_as_json(ask_token(server, victim, PASSWORD, new_address()))


def test_with_redis_down_logins_still_work_and_are_still_limited(
    start_server, start_redis, make_user
):
    redis = start_redis()
    # One worker: without Redis each worker counts on its own.
    server = start_server(REDIS_URL=redis.url, WEB_CONCURRENCY="1", **LIMITS)
    user = make_user()
    assert ask_token(server, user, PASSWORD, new_address()).status_code == 200
    redis.stop()
    # Counted in the worker's memory from now on: never a 500.
    victim = make_user()
    for _ in range(PER_ACCOUNT):
        assert ask_token(server, victim, WRONG, new_address()).status_code == 401
    assert_refused_as_json(ask_token(server, victim, PASSWORD, new_address()))
    assert ask_token(server, user, PASSWORD, new_address()).status_code == 200


def test_once_redis_is_back_the_counts_are_shared_again(
    start_server, start_redis, make_user
):
    """A worker that counted in its memory while Redis was away tries Redis
    again a few seconds later, and from then on counts there: another
    instance sees its tries."""
    redis = start_redis()
    first, second = (
        start_server(REDIS_URL=redis.url, WEB_CONCURRENCY="1", **LIMITS)
        for _ in range(2)
    )
    redis.stop()
    assert ask_token(first, make_user(), WRONG, new_address()).status_code == 401
    assert "cannot count password tries in Redis" in first.log()
    redis = start_redis(port=redis.port)
    back = "counting password tries in Redis again"
    # Each try on the way names an account of its own (none that exists).
    strangers = (f"stranger{n}@example.com" for n in itertools.count())
    wait_until(
        lambda: (
            ask_token(first, next(strangers), WRONG, new_address()).status_code == 401
            and back in first.log()
        ),
        timeout=30,
        what="the worker to count in Redis again",
    )
    victim = make_user()
    for _ in range(PER_ACCOUNT):
        assert ask_token(first, victim, WRONG, new_address()).status_code == 401
    assert_refused_as_json(ask_token(second, victim, PASSWORD, new_address()))
{%- endif %}
