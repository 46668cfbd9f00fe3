"""Settings: a missing secret or a wrong value stops the service with one
line, every setting is documented, and cookies are locked down."""

import json
import re
import secrets
import subprocess

import pytest
import requests

from {{ cookiecutter.package_name }}.config import Settings

from .conftest import (
    BIN,
    PROJECT_ROOT,
    clean_environ,
    run_flask,
    stop_process,
    wait_until,
)
from .processes import reserved_port


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


SECRET_KEY_REFUSALS = [
    (None, f"error: SECRET_KEY is not set; {HINT}"),
    ("", f"error: SECRET_KEY is not set; {HINT}"),
    ("change-me", f"error: SECRET_KEY is a placeholder; {HINT}"),
    (
        "short",
        f"error: SECRET_KEY is 5 characters long, at least 32 are needed; {HINT}",
    ),
]


@pytest.mark.parametrize(("secret", "message"), SECRET_KEY_REFUSALS)
def test_production_refuses_a_missing_or_weak_secret_key(secret, message):
    config = {"APP_ENV": "production"}
    if secret is not None:
        config["SECRET_KEY"] = secret
    with pytest.raises(SystemExit) as refused:
        Settings.from_env(config)
    assert refused.value.code == message


def test_gunicorn_refuses_to_start_without_a_secret_key(tmp_path):
    # The settings' refusal above, as the server says it: one line, exit 1.
    result = start_gunicorn(tmp_path, APP_ENV="production")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"error: SECRET_KEY is not set; {HINT}\n"


@pytest.mark.parametrize("app_env", ["development", "production"])
def test_the_placeholder_of_env_example_never_starts(tmp_path, app_env):
    placeholder = "change-me"  # noqa: S105 (the one .env.example ships)
    config = {"APP_ENV": app_env, "SECRET_KEY": placeholder}
    message = f"error: SECRET_KEY is a placeholder; {HINT}"
    with pytest.raises(SystemExit) as refused:
        Settings.from_env(config)
    assert refused.value.code == message
    if app_env == "development":  # where a placeholder would be let through
        result = start_gunicorn(tmp_path, **config)
        assert result.returncode == 1
        assert result.stderr == message + "\n"


def test_a_missing_key_outside_production_is_random_and_said(start_server):
    server = start_server(APP_ENV="development", SECRET_KEY="")
    assert (
        "SECRET_KEY is not set: using a random key until this process stops, so "
        f"logins will not survive a restart; {HINT}"
    ) in server.log()
    keys = {Settings.from_env({"APP_ENV": "development"}).SECRET_KEY for _ in "ab"}
    assert len(keys) == 2
    assert all(len(key) >= 32 for key in keys)


def test_in_production_the_refusal_is_a_json_line_unless_told_otherwise(tmp_path):
    # LOG_FORMAT empty: by APP_ENV, json in production (test_logs.py, the rest).
    result = start_gunicorn(tmp_path, APP_ENV="production", LOG_FORMAT="")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    refusal = json.loads(line)
    assert refusal["level"] == "CRITICAL"
    assert refusal["message"] == f"SECRET_KEY is not set; {HINT}"


def test_flask_command_refuses_too(tmp_path):
    result = run_flask({"APP_ENV": "production"}, "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"error: SECRET_KEY is not set; {HINT}\n"


def run_python(settings: dict, code: str) -> subprocess.CompletedProcess:
    """`python -c code` in the project's environment, with `settings` only."""
    return subprocess.run(
        [str(BIN / "python"), "-c", code],
        cwd=PROJECT_ROOT,
        env=clean_environ(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_alembic_is_imported_by_the_db_commands_only(settings):
    """Every gunicorn start builds the app. Alembic, through Flask-Migrate, is
    a tenth of its import, and only `flask db ...` needs it."""
    check = (
        "import sys; from {{ cookiecutter.package_name }} import create_app; create_app(); "
        "print([name for name in ('alembic', 'flask_migrate') if name in sys.modules])"
    )
    built = run_python(settings, check)
    assert (built.returncode, built.stdout) == (0, "[]\n"), built.stderr
    listed = run_flask(settings, "db", "--help")
    assert listed.returncode == 0, listed.stderr
    commands = set(re.findall(r"^  ([a-z-]+)", listed.stdout, re.MULTILINE))
    assert {"upgrade", "downgrade", "migrate", "current", "history"} <= commands


def test_wrong_settings_stop_gunicorn_with_one_clear_line(tmp_path):
    # Every setting's own line is checked in process below; the server says
    # them all in one line on stderr, and exits 1.
    result = start_gunicorn(
        tmp_path,
        SECRET_KEY=secrets.token_urlsafe(48),
        APP_ENV="staging",
        WS_MAX_MESSAGE_SIZE="64k",
        WS_COMPRESSION="maybe",
        AUTH_LIMIT_PER_ADDRESS="0/minute",
        AUTH_LIMIT_PER_ACCOUNT="5 a minute",
        WEB_CONCURRENCY="0",
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: APP_ENV is 'staging'; use one of production, development, testing; "
        "WS_MAX_MESSAGE_SIZE must be a whole number, got '64k'; "
        "WS_COMPRESSION must be on or off, got 'maybe'; "
        "AUTH_LIMIT_PER_ADDRESS must be a rate such as 30/minute, got '0/minute'; "
        "AUTH_LIMIT_PER_ACCOUNT must be a rate such as 30/minute, got '5 a minute'; "
        "WEB_CONCURRENCY must be at least 1, got 0\n"
    )


# A wrong value for every setting that has one, and the line it gets.
WRONG_VALUES = {
    "APP_ENV": (
        "prod",
        "APP_ENV is 'prod'; use one of production, development, testing",
    ),
    "SECRET_KEY": ("dev", f"SECRET_KEY is a placeholder; {HINT}"),
    "WS_PING_INTERVAL": ("-1", "WS_PING_INTERVAL must be at least 0, got -1"),
    "WS_MAX_MESSAGE_SIZE": (
        "1.5",
        "WS_MAX_MESSAGE_SIZE must be a whole number, got '1.5'",
    ),
    "WS_COMPRESSION": ("2", "WS_COMPRESSION must be on or off, got '2'"),
    "WS_SEND_QUEUE_LIMIT": ("0", "WS_SEND_QUEUE_LIMIT must be at least 1, got 0"),
    "WS_MAX_SOCKETS_PER_USER": (
        "ten",
        "WS_MAX_SOCKETS_PER_USER must be a whole number, got 'ten'",
    ),
    "WS_MAX_MESSAGES_PER_SECOND": (
        "0",
        "WS_MAX_MESSAGES_PER_SECOND must be at least 1, got 0",
    ),
    "TOKEN_MAX_AGE": ("1h", "TOKEN_MAX_AGE must be a whole number, got '1h'"),
    "AUTH_LIMIT_PER_ADDRESS": (
        "often",
        "AUTH_LIMIT_PER_ADDRESS must be a rate such as 30/minute, got 'often'",
    ),
    "AUTH_LIMIT_PER_ACCOUNT": (
        "5/fortnight",
        "AUTH_LIMIT_PER_ACCOUNT must be a rate such as 30/minute, got '5/fortnight'",
    ),
    "TRUSTED_PROXY_COUNT": ("-1", "TRUSTED_PROXY_COUNT must be at least 0, got -1"),
    "FORWARDED_ALLOW_IPS": (
        "10.0.0.0/8,nginx",
        "FORWARDED_ALLOW_IPS must list IP addresses or networks, got 'nginx'",
    ),
    "PORT": ("http", "PORT must be a whole number, got 'http'"),
    "WEB_CONCURRENCY": ("-2", "WEB_CONCURRENCY must be at least 1, got -2"),
{%- if cookiecutter.worker_class == "gevent" %}
    "GUNICORN_WORKER_CONNECTIONS": (
        "1e3",
        "GUNICORN_WORKER_CONNECTIONS must be a whole number, got '1e3'",
    ),
{%- else %}
    "GUNICORN_THREADS": ("0", "GUNICORN_THREADS must be at least 1, got 0"),
{%- endif %}
    "LOG_FORMAT": ("xml", "LOG_FORMAT is 'xml'; use one of text, json"),
}
# Any text is taken: a URL is checked when it is used, by /readyz.
ANY_VALUE = [
    "DATABASE_URL",
{%- if cookiecutter.broadcast == "redis" %}
    "REDIS_URL",
{%- endif %}
    "ALLOWED_ORIGINS",
    "HOST",
    "PROMETHEUS_MULTIPROC_DIR",
]


def test_every_setting_is_checked_or_takes_any_value():
    assert sorted(Settings.model_fields) == sorted([*WRONG_VALUES, *ANY_VALUE])


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [(name, value, message) for name, (value, message) in WRONG_VALUES.items()],
)
def test_each_wrong_setting_is_named_in_one_line(name, value, message):
    config = {"SECRET_KEY": secrets.token_urlsafe(48), name: value}
    with pytest.raises(SystemExit) as refused:
        Settings.from_env(config)
    assert refused.value.code == f"error: {message}"


def test_every_wrong_setting_is_named_in_the_same_line():
    config = {"SECRET_KEY": secrets.token_urlsafe(48), "PORT": "0", "HOST": ""}
    config.update(WS_COMPRESSION="maybe", WEB_CONCURRENCY="many")
    with pytest.raises(SystemExit) as refused:
        Settings.from_env(config)
    assert refused.value.code == (
        "error: WS_COMPRESSION must be on or off, got 'maybe'; "
        "PORT must be at least 1, got 0; "
        "WEB_CONCURRENCY must be a whole number, got 'many'"
    )


def test_values_are_normalised():
    settings = Settings.from_env(
        {
            "SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": "postgres://app@db.example.com/app",
            "ALLOWED_ORIGINS": " https://Chat.Example.com/ ,http://127.0.0.1:8000,",
            "FORWARDED_ALLOW_IPS": "10.0.0.0/8, ::1",
            "WS_COMPRESSION": "on",
            "HOST": "",
        }
    )
    assert settings.DATABASE_URL == "postgresql+psycopg://app@db.example.com/app"
    assert settings.ALLOWED_ORIGINS == (
        "https://chat.example.com",
        "http://127.0.0.1:8000",
    )
    assert settings.FORWARDED_ALLOW_IPS == ("10.0.0.0/8", "::1")
    assert settings.WS_COMPRESSION is True
    assert settings.HOST == "127.0.0.1"


@pytest.fixture
def no_settings_in_the_environment(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRET_KEY", secrets.token_urlsafe(48))


def test_dotenv_completes_the_environment_which_wins(
    no_settings_in_the_environment, tmp_path, monkeypatch
):
    (tmp_path / ".env").write_text(
        "TOKEN_MAX_AGE=60\nWS_MAX_SOCKETS_PER_USER=3\nNGINX_AUTH_RATE=1r/s\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKEN_MAX_AGE", "120")
    settings = Settings.from_env()
    assert (settings.TOKEN_MAX_AGE, settings.WS_MAX_SOCKETS_PER_USER) == (120, 3)


def test_settings_given_by_name_win_and_dotenv_is_not_read(
    no_settings_in_the_environment, tmp_path, monkeypatch
):
    (tmp_path / ".env").write_text("WS_MAX_SOCKETS_PER_USER=3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKEN_MAX_AGE", "120")
    monkeypatch.setenv("WS_MAX_MESSAGES_PER_SECOND", "5")
    settings = Settings.from_env({"TOKEN_MAX_AGE": "30"})
    assert settings.TOKEN_MAX_AGE == 30
    assert settings.WS_MAX_MESSAGES_PER_SECOND == 5
    assert settings.WS_MAX_SOCKETS_PER_USER == 10


def settings_table() -> dict[str, str]:
    """{variable: default cell} of the README's settings table."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (.*?) \|", section, re.M))


def as_written(value) -> str:
    """A setting's value the way the README and .env.example write it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_the_readme_table_lists_every_setting_with_its_default():
    table = settings_table()
    fields = Settings.model_fields
    assert sorted(set(fields) - set(table)) == [], "settings missing from the table"
    assert sorted(set(table) - set(fields)) == [], "rows for no setting"
    # The defaults, where the table gives one as a plain value.
    for name, cell in table.items():
        if literal := re.fullmatch(r"`([^`]*)`", cell):
            default = as_written(fields[name].default)
            assert literal.group(1) == default, f"{name}: the default is {default}"


def test_env_example_has_a_line_for_every_setting():
    example = (PROJECT_ROOT / ".env.example").read_text()
    lines = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    assert sorted(set(Settings.model_fields) - lines) == []


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
    log = tmp_path / "gunicorn.log"
    # Held until gunicorn has stopped, so that no other suite is handed it.
    with reserved_port() as port, log.open("w") as output:
        environ = {**settings, "PORT": str(port)}
        if host:
            environ["HOST"] = host
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"],
            cwd=PROJECT_ROOT,
            env=clean_environ(**environ),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: "Listening at" in log.read_text(), 30, "gunicorn listens"
            )
            assert f"Listening at: http://{listening}:{port} " in log.read_text()
        finally:
            stop_process(server, timeout=40)
{%- if cookiecutter.worker_class == "gevent" %}


def test_gevent_keeps_no_record_of_where_each_greenlet_was_spawned(settings):
    """gevent records a greenlet's spawner and stack by default, about 1 KB
    for each of an open socket's two greenlets; gunicorn.conf.py turns that
    off in the master, and the workers it forks inherit it."""
    spawned = "print(gevent.spawn(lambda: None).spawning_stack is None)"
    script = "; ".join(
        [
            "import runpy, gevent",
            spawned,
            "runpy.run_path('gunicorn.conf.py')",
            spawned,
        ]
    )
    ran = run_python(settings, script)
    assert (ran.returncode, ran.stdout) == (0, "False\nTrue\n"), ran.stderr
{%- endif %}
