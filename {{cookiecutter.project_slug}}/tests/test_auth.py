"""Accounts: the CLI, the forms (with CSRF) and bearer tokens."""

import requests

from .conftest import PASSWORD, bearer_token, log_in, run_flask, submit_form


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
    response = requests.get(f"{server.url}/", allow_redirects=False)
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
    )
    assert response.status_code == 400


def test_login_with_a_wrong_password_is_refused(server, alice):
    fields = {"email": alice, "password": "wrong"}
    response = submit_form(requests.Session(), f"{server.url}/auth/login", fields)
    assert response.status_code == 400
    assert "Wrong email or password." in response.text


def test_login_never_redirects_to_another_site(server, alice):
    response = submit_form(
        requests.Session(),
        f"{server.url}/auth/login",
        {"email": alice, "password": PASSWORD},
        target=f"{server.url}/auth/login?next=//evil.test/",
    )
    assert response.headers["Location"] == "/"


def test_token_for_wrong_credentials_is_401_json(server, alice):
    response = requests.post(f"{server.url}/auth/token", auth=(alice, "wrong"))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid email or password"}
    assert requests.post(f"{server.url}/auth/token").status_code == 401


def test_token_response_says_when_it_expires(server, alice):
    response = requests.post(f"{server.url}/auth/token", auth=(alice, PASSWORD))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_in"}
    assert body["expires_in"] == 3600
