"""Accounts: the CLI, the forms (with CSRF) and bearer tokens, in process."""

import statistics
import time
from urllib.parse import urlencode

import pytest
from sqlalchemy import exc, select

from {{ cookiecutter.package_name }}.auth.loaders import socket_user
from {{ cookiecutter.package_name }}.auth.models import User
from {{ cookiecutter.package_name }}.extensions import db

from .conftest import (
    PASSWORD,
    csrf_token,
{%- if cookiecutter.database == "postgresql" %}
    free_port,
{%- endif %}
    make_app,
)


def test_users_create_refuses_a_duplicate_with_one_line(runner, user):
    result = runner.invoke(args=["users", "create", user, "--password", PASSWORD])
    assert result.exit_code == 1
    assert result.stderr == f"Error: a user with the email {user} already exists\n"


def test_users_create_refuses_a_short_password(runner):
    result = runner.invoke(
        args=["users", "create", "c@example.com", "--password", "short"]
    )
    assert result.exit_code == 1
    assert result.stderr == ("Error: the password must be at least 8 characters long\n")


def test_users_create_prompts_for_the_password(runner):
    typed = f"{PASSWORD}\n{PASSWORD}\n"
    result = runner.invoke(
        args=["users", "create", "prompted@example.com"], input=typed
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("created user prompted@example.com\n")


def test_demo_page_redirects_anonymous_visitors_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/auth/login?next=/"


def test_demo_page_has_the_contract_ids(client, auth, user):
    auth.log_in(user)
    page = client.get("/")
    assert page.status_code == 200
    for element_id in ("chat-form", "chat-input", "chat-log", "status"):
        assert f'id="{element_id}"' in page.text


def test_register_creates_an_account_and_logs_in(client, auth):
    fields = {
        "email": "New.User@Example.com",
        "password": PASSWORD,
        "confirm": PASSWORD,
    }
    response = auth.submit("/auth/register", fields)
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    token = auth.token("new.user@example.com")
    assert token.status_code == 200
    assert token.json["token"]


def test_register_refuses_a_taken_email(auth, user):
    fields = {"email": user, "password": PASSWORD, "confirm": PASSWORD}
    response = auth.submit("/auth/register", fields)
    assert response.status_code == 400
    assert f"A user with the email {user} already exists." in response.text


def test_login_without_csrf_token_is_refused(client, user):
    response = client.post("/auth/login", data={"email": user, "password": PASSWORD})
    assert response.status_code == 400


def test_login_with_a_wrong_password_is_refused(auth, user):
    response = auth.submit("/auth/login", {"email": user, "password": "wrong"})
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
def test_login_redirects_only_to_paths_of_this_site(auth, user, next_page, location):
    response = auth.submit(
        "/auth/login",
        {"email": user, "password": PASSWORD},
        target=f"/auth/login?{urlencode({'next': next_page})}",
    )
    assert response.status_code == 302
    assert response.headers["Location"] == location


def test_token_for_wrong_credentials_is_401_json(client, auth, user):
    response = auth.token(user, "wrong")
    assert response.status_code == 401
    assert response.json == {"error": "invalid email or password"}
    assert client.post("/auth/token").status_code == 401


def test_token_response_says_when_it_expires(auth, user):
    response = auth.token(user)
    assert response.status_code == 200
    body = response.json
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


def test_token_takes_as_long_for_an_unknown_email_as_for_a_wrong_password(auth, user):
    def attempt(email: str):
        def post() -> None:
            assert auth.token(email, "wrong!").status_code == 401

        return post

    ratio = median_ratio(attempt("nobody@example.com"), attempt(user))
    assert 0.5 <= ratio <= 2, f"an unknown email takes {ratio:.2f} times as long"


def test_login_takes_as_long_for_an_unknown_email_as_for_a_wrong_password(client, user):
    token = csrf_token(client.get("/auth/login").text)

    def attempt(email: str):
        def post() -> None:
            fields = {"email": email, "password": "wrong!", "csrf_token": token}
            response = client.post("/auth/login", data=fields)
            assert response.status_code == 400
            assert "Wrong email or password." in response.text

        return post

    ratio = median_ratio(attempt("nobody@example.com"), attempt(user))
    assert 0.5 <= ratio <= 2, f"an unknown email takes {ratio:.2f} times as long"


def test_a_handshake_reads_the_users_id_email_and_version_and_gives_back_the_connection(
    app, user
):
    """auth/loaders.py's `socket_user`: one query on a connection of the
    engine's pool, which goes back to the pool."""
    with app.app_context():
        query = select(User).where(User.email == user)
        account = db.session.execute(query).scalar_one()
        found = socket_user(account.id)
        assert (found.id, found.email, found.credential_version) == (
            account.id,
            user,
            account.credential_version,
        )
        assert socket_user(account.id + 1) is None
        db.session.remove()
        assert db.engine.pool.checkedout() == 0


def test_a_failed_handshake_query_raises_sqlalchemys_error_keeps_the_pool(app, user):
    """A driver's error reaches the app as SQLAlchemy's (errors.py answers a
    database that is down with 503), and the connection goes back to the pool
    in a state the next handshake can use."""
    with app.app_context():
        account_id = db.session.execute(select(User.id)).scalar_one()
        db.session.remove()
        User.__table__.drop(db.engine)
        with pytest.raises(exc.DBAPIError) as failed:
            socket_user(account_id)
        assert isinstance(failed.value.orig, db.engine.dialect.loaded_dbapi.Error)
        assert not failed.value.connection_invalidated
        assert db.engine.pool.checkedout() == 0
        User.__table__.create(db.engine)
        assert socket_user(account_id) is None


def test_a_database_that_cannot_be_reached_fails_a_handshake_query_as_sqlalchemy_does(
    app_settings, tmp_path
):
{%- if cookiecutter.database == "postgresql" %}
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
{%- else %}
    unreachable = f"sqlite:///{tmp_path / 'no-such-folder' / 'app.db'}"
{%- endif %}
    app = make_app({**app_settings, "DATABASE_URL": unreachable})
    with app.app_context(), pytest.raises(exc.OperationalError):
        socket_user(1)
