"""Settings: a missing secret stops the service with one line, and cookies
are locked down."""

import secrets
import subprocess

import pytest
import requests

from {{ cookiecutter.package_name }}.config import Settings

from .conftest import (
    BIN,
    PROJECT_ROOT,
    clean_environ,
    free_port,
    run_flask,
    stop_process,
    wait_until,
)


def start_gunicorn(tmp_path, **settings) -> subprocess.CompletedProcess:
    # From an empty folder, so that the project's .env is not read.
    return subprocess.run(
        [str(BIN / "gunicorn"), "-c", str(PROJECT_ROOT / "gunicorn.conf.py")],
        cwd=tmp_path,
        env=clean_environ(**settings),
        capture_output=True,
        text=True,
        timeout=30,
    )


HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        (None, f"error: SECRET_KEY is not set; {HINT}"),
        ("", f"error: SECRET_KEY is not set; {HINT}"),
        ("change-me", f"error: SECRET_KEY is a placeholder; {HINT}"),
        (
            "short",
            f"error: SECRET_KEY is 5 characters long, at least 32 are needed; {HINT}",
        ),
    ],
)
def test_gunicorn_refuses_to_start_without_a_real_secret_key(tmp_path, secret, message):
    settings = {"APP_ENV": "production"}
    if secret is not None:
        settings["SECRET_KEY"] = secret
    result = start_gunicorn(tmp_path, **settings)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == message + "\n"


@pytest.mark.parametrize("app_env", ["development", "production"])
def test_the_placeholder_of_env_example_never_starts(tmp_path, app_env):
    placeholder = "change-me"  # noqa: S105 (the one .env.example ships)
    result = start_gunicorn(tmp_path, APP_ENV=app_env, SECRET_KEY=placeholder)
    assert result.returncode == 1
    assert result.stderr == f"error: SECRET_KEY is a placeholder; {HINT}\n"


def test_a_missing_key_outside_production_is_random_and_said(start_server):
    server = start_server(APP_ENV="development", SECRET_KEY="")
    assert (
        "SECRET_KEY is not set: using a random key until this process stops, so "
        f"logins will not survive a restart; {HINT}"
    ) in server.log()
    keys = {Settings.from_env({"APP_ENV": "development"}).secret_key for _ in "ab"}
    assert len(keys) == 2
    assert all(len(key) >= 32 for key in keys)


def test_flask_command_refuses_too(tmp_path):
    result = run_flask({"APP_ENV": "production"}, "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"error: SECRET_KEY is not set; {HINT}\n"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "APP_ENV",
            "staging",
            "error: APP_ENV is 'staging'; use one of production, development, testing",
        ),
        (
            "WS_MAX_MESSAGE_SIZE",
            "64k",
            "error: WS_MAX_MESSAGE_SIZE must be a whole number, got '64k'",
        ),
        ("WEB_CONCURRENCY", "0", "error: WEB_CONCURRENCY must be at least 1, got 0"),
        (
            "WS_COMPRESSION",
            "maybe",
            "error: WS_COMPRESSION must be on or off, got 'maybe'",
        ),
        (
            "AUTH_LIMIT_PER_ACCOUNT",
            "5 a minute",
            "error: AUTH_LIMIT_PER_ACCOUNT must be a rate such as 30/minute, "
            "got '5 a minute'",
        ),
        (
            "AUTH_LIMIT_PER_ADDRESS",
            "0/minute",
            "error: AUTH_LIMIT_PER_ADDRESS must be a rate such as 30/minute, "
            "got '0/minute'",
        ),
    ],
)
def test_a_wrong_setting_is_one_clear_line(tmp_path, name, value, message):
    result = start_gunicorn(
        tmp_path, SECRET_KEY=secrets.token_urlsafe(48), **{name: value}
    )
    assert result.returncode == 1
    assert result.stderr == message + "\n"


def test_production_session_cookie_is_secure_httponly_lax(start_server):
    server = start_server(APP_ENV="production", SECRET_KEY=secrets.token_urlsafe(48))
    cookie = requests.get(f"{server.url}/auth/login", timeout=30).headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0] for part in cookie.split(";")}
    assert {"Secure", "HttpOnly", "SameSite"} <= attributes
    assert "SameSite=Lax" in cookie


def test_development_session_cookie_is_httponly_lax_but_not_secure(server):
    cookie = requests.get(f"{server.url}/auth/login", timeout=30).headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


@pytest.mark.parametrize(
    ("host", "listening"),
    [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")],  # noqa: S104 (checked, not used)
)
def test_gunicorn_listens_on_loopback_unless_host_says_otherwise(
    settings, tmp_path, host, listening
):
    port = free_port()
    environ = {**settings, "PORT": str(port)}
    if host:
        environ["HOST"] = host
    log = tmp_path / "gunicorn.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"],
            cwd=PROJECT_ROOT,
            env=clean_environ(**environ),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: "Listening at" in log.read_text(), 30, "gunicorn listens")
        assert f"Listening at: http://{listening}:{port} " in log.read_text()
    finally:
        stop_process(server, timeout=40)
