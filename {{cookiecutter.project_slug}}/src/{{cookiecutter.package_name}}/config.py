"""Settings, read from the environment (and `.env`) here and nowhere else.

Every variable is listed in `.env.example` and in the README's settings table.
"""

import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from limits import parse_many
{%- if cookiecutter.broadcast == "redis" %}
from redis.backoff import NoBackoff
from redis.retry import Retry
{%- endif %}

ENVIRONMENTS = ("production", "development", "testing")

# Chosen when the project was generated, like gunicorn.conf.py's worker_class.
WORKER_CLASS = "{{ cookiecutter.worker_class }}"
{%- if cookiecutter.broadcast == "redis" %}
# Redis carries chat between workers, so one per core of a small machine.
DEFAULT_WORKERS = 2
{%- else %}
# One: the in-process chat hub reaches only the sockets of its own worker.
DEFAULT_WORKERS = 1
{%- endif %}

# A key shorter than this is a typo or a placeholder, not a secret.
MIN_SECRET_KEY_LENGTH = 32
# What .env.example and tutorials put there: anyone can sign cookies with them.
PLACEHOLDER_SECRET_KEYS = {"change-me", "changeme", "secret", "dev"}

GENERATE_KEY_HINT = (
    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
)


class ConfigError(SystemExit):
    """A setting is missing or wrong.

    It is a SystemExit so that `gunicorn` and `flask` stop with this one line
    instead of a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


@dataclass(frozen=True)
class Settings:
    app_env: str
    secret_key: str
    database_url: str | None
    redis_url: str
    allowed_origins: tuple[str, ...]
    ws_ping_interval: float
    ws_max_message_size: int
    ws_compression: bool
    ws_send_queue_limit: int
    ws_max_sockets_per_user: int
    ws_max_messages_per_second: int
    token_max_age: int
    auth_limit_per_address: str
    auth_limit_per_account: str
    trusted_proxy_count: int
    forwarded_allow_ips: tuple[str, ...]
    host: str
    port: int
    web_concurrency: int
    gunicorn_threads: int
    gunicorn_worker_connections: int

    @property
    def worker_concurrency(self) -> int:
        """Requests one gunicorn worker serves at once, sockets included."""
        if WORKER_CLASS == "gevent":
            return self.gunicorn_worker_connections
        return self.gunicorn_threads

    @property
    def websockets_per_worker(self) -> int:
        """Sockets one worker admits: its concurrency less a reserve that keeps
        HTTP (health checks, logins) answering when sockets fill the rest."""
        reserve = max(2, self.worker_concurrency // 10)
        return max(1, self.worker_concurrency - reserve)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings from `environ` (default: the process environment,
        completed by `.env` in the working directory without overriding it)."""
        if environ is None:
            environ = {**dotenv_values(Path.cwd() / ".env"), **os.environ}
        env = _Reader(environ)

        app_env = env.str("APP_ENV", "production")
        if app_env not in ENVIRONMENTS:
            raise ConfigError(
                f"APP_ENV is {app_env!r}; use one of {', '.join(ENVIRONMENTS)}"
            )
        return cls(
            app_env=app_env,
            secret_key=_secret_key(env.str("SECRET_KEY", ""), app_env),
            database_url=_database_url(env.str("DATABASE_URL", "")),
            redis_url=env.str("REDIS_URL", "redis://127.0.0.1:6379/0"),
            allowed_origins=_origins(env.str("ALLOWED_ORIGINS", "")),
            ws_ping_interval=env.number("WS_PING_INTERVAL", 25, minimum=0),
            ws_max_message_size=env.integer("WS_MAX_MESSAGE_SIZE", 65536, minimum=1),
            ws_compression=env.on_off("WS_COMPRESSION", False),
            ws_send_queue_limit=env.integer(
                "WS_SEND_QUEUE_LIMIT", 1024 * 1024, minimum=1
            ),
            ws_max_sockets_per_user=env.integer(
                "WS_MAX_SOCKETS_PER_USER", 10, minimum=1
            ),
            ws_max_messages_per_second=env.integer(
                "WS_MAX_MESSAGES_PER_SECOND", 20, minimum=1
            ),
            token_max_age=env.integer("TOKEN_MAX_AGE", 3600, minimum=1),
            auth_limit_per_address=env.rate("AUTH_LIMIT_PER_ADDRESS", "30/minute"),
            auth_limit_per_account=env.rate("AUTH_LIMIT_PER_ACCOUNT", "5/minute"),
            trusted_proxy_count=env.integer("TRUSTED_PROXY_COUNT", 0, minimum=0),
            # gunicorn's own default, and the same variable gunicorn reads.
            forwarded_allow_ips=env.addresses("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
            host=env.str("HOST", "127.0.0.1") or "127.0.0.1",
            port=env.integer("PORT", 8000, minimum=1),
            web_concurrency=env.integer("WEB_CONCURRENCY", DEFAULT_WORKERS, minimum=1),
            gunicorn_threads=env.integer("GUNICORN_THREADS", 100, minimum=1),
            gunicorn_worker_connections=env.integer(
                "GUNICORN_WORKER_CONNECTIONS", 1000, minimum=1
            ),
        )

    def flask_config(self, instance_path: str) -> dict:
        """The Flask configuration these settings amount to."""
        production = self.app_env == "production"
        database_url = (
            self.database_url or f"sqlite:///{Path(instance_path) / 'app.db'}"
        )
        return {
            "APP_ENV": self.app_env,
            "TESTING": self.app_env == "testing",
            "SECRET_KEY": self.secret_key,
            "SQLALCHEMY_DATABASE_URI": database_url,
{%- if cookiecutter.database == "postgresql" %}
            "SQLALCHEMY_ENGINE_OPTIONS": _engine_options(database_url),
{%- else %}
            # Check a pooled connection before use: the database may have
            # restarted since. https://docs.sqlalchemy.org/en/20/core/pooling.html#pool-disconnects
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
{%- endif %}
            "REDIS_URL": self.redis_url,
            "ALLOWED_ORIGINS": self.allowed_origins,
            "TOKEN_MAX_AGE": self.token_max_age,
            # Read by auth/limits.py, and the Flask-Limiter settings they need.
            # A moving window: a fixed one lets twice the limit through
            # across the turn of a minute.
            # https://flask-limiter.readthedocs.io/en/stable/configuration.html
            "AUTH_LIMIT_PER_ADDRESS": self.auth_limit_per_address,
            "AUTH_LIMIT_PER_ACCOUNT": self.auth_limit_per_account,
            "RATELIMIT_STRATEGY": "moving-window",
            "RATELIMIT_KEY_PREFIX": "{{ cookiecutter.package_name }}",
{%- if cookiecutter.broadcast == "redis" %}
            # Shared by every worker and instance. With Redis down each worker
            # counts on its own rather than refuse every login.
            "RATELIMIT_STORAGE_URI": self.redis_url,
            # Given up on after 2 s, not resent: redis-py's default retries
            # would hold a login for many seconds while Redis is away.
            "RATELIMIT_STORAGE_OPTIONS": {
                "socket_connect_timeout": 2,
                "socket_timeout": 2,
                "retry": Retry(NoBackoff(), 0),
            },
            "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
{%- else %}
            # Counted in each worker's memory: exact with one worker
            # (WEB_CONCURRENCY=1, the default here), per worker with more.
            "RATELIMIT_STORAGE_URI": "memory://",
{%- endif %}
            "TRUSTED_PROXY_COUNT": self.trusted_proxy_count,
            "FORWARDED_ALLOW_IPS": self.forwarded_allow_ips,
            "WEBSOCKETS_PER_WORKER": self.websockets_per_worker,
            "WS_COMPRESSION": self.ws_compression,
            "WS_SEND_QUEUE_LIMIT": self.ws_send_queue_limit,
            "WS_MAX_SOCKETS_PER_USER": self.ws_max_sockets_per_user,
            "WS_MAX_MESSAGES_PER_SECOND": self.ws_max_messages_per_second,
            # https://flask.palletsprojects.com/en/stable/web-security/#set-cookie-options
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": production,
            "REMEMBER_COOKIE_HTTPONLY": True,
            "REMEMBER_COOKIE_SAMESITE": "Lax",
            "REMEMBER_COOKIE_SECURE": production,
            # Read by Flask-Sock and handed to simple_websocket.Server.
            # Pings keep idle sockets alive through proxies that time out
            # silent connections (nginx: proxy_read_timeout, 60 s).
            # https://flask-sock.readthedocs.io/en/latest/web_servers.html
            "SOCK_SERVER_OPTIONS": {
                "ping_interval": self.ws_ping_interval or None,
                "max_message_size": self.ws_max_message_size,
            },
        }


class _Reader:
    """Typed access to an environment mapping, with one-line errors."""

    def __init__(self, environ: Mapping[str, str | None]) -> None:
        self._environ = environ

    def str(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return default if value is None else value.strip()

    def integer(self, name: str, default: int, minimum: int) -> int:
        return self._number(name, default, minimum, int, "a whole number")

    def number(self, name: str, default: float, minimum: float) -> float:
        return self._number(name, default, minimum, float, "a number")

    def _number(self, name, default, minimum, convert, kind):
        raw = self.str(name, str(default))
        try:
            value = convert(raw)
        except ValueError:
            raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        return value

    def on_off(self, name: str, default: bool) -> bool:
        raw = self.str(name, "on" if default else "off")
        if raw.lower() in ("on", "true", "yes", "1"):
            return True
        if raw.lower() in ("off", "false", "no", "0"):
            return False
        raise ConfigError(f"{name} must be on or off, got {raw!r}")

    def rate(self, name: str, default: str) -> str:
        """A rate such as `30/minute` or `5 per 10 seconds`, or several
        separated by `;`, in the notation of the limits library:
        https://limits.readthedocs.io/en/stable/quickstart.html#rate-limit-string-notation
        """
        raw = self.str(name, default)
        try:
            items = parse_many(raw)
        except ValueError:
            items = []
        if not items or any(item.amount < 1 for item in items):
            raise ConfigError(f"{name} must be a rate such as 30/minute, got {raw!r}")
        return raw

    def addresses(self, name: str, default: str) -> tuple[str, ...]:
        """IP addresses or networks (CIDR), comma-separated; `*` means any."""
        raw = self.str(name, default)
        addresses = tuple(item.strip() for item in raw.split(",") if item.strip())
        for address in addresses:
            if address == "*":
                continue
            try:
                ipaddress.ip_network(address)
            except ValueError:
                raise ConfigError(
                    f"{name} must list IP addresses or networks, got {address!r}"
                ) from None
        return addresses


def _secret_key(value: str, app_env: str) -> str:
    if not value:
        if app_env == "production":
            raise ConfigError(f"SECRET_KEY is not set; {GENERATE_KEY_HINT}")
        # A key nobody else knows, so that `flask` commands and a first run
        # work before `.env` exists; sessions and tokens end with the process.
        logging.getLogger(__name__).warning(
            "SECRET_KEY is not set: using a random key until this process "
            "stops, so logins will not survive a restart; %s",
            GENERATE_KEY_HINT,
        )
        return secrets.token_urlsafe(48)
    if value.lower() in PLACEHOLDER_SECRET_KEYS and app_env != "testing":
        raise ConfigError(f"SECRET_KEY is a placeholder; {GENERATE_KEY_HINT}")
    if len(value) < MIN_SECRET_KEY_LENGTH and app_env == "production":
        raise ConfigError(
            f"SECRET_KEY is {len(value)} characters long, "
            f"at least {MIN_SECRET_KEY_LENGTH} are needed; {GENERATE_KEY_HINT}"
        )
    return value


def _database_url(value: str) -> str | None:
    """Point PostgreSQL URLs at psycopg 3, whichever spelling was given."""
    for prefix in ("postgres://", "postgresql://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value.removeprefix(prefix)
    return value or None


{%- if cookiecutter.database == "postgresql" %}


def _engine_options(database_url: str) -> dict:
    # Check a pooled connection before use: the database may have restarted
    # since. https://docs.sqlalchemy.org/en/20/core/pooling.html#pool-disconnects
    options: dict = {"pool_pre_ping": True}
    if database_url.startswith("postgresql"):
        # A server that does not answer fails a request in seconds (503)
        # instead of holding its thread for minutes.
        # https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-CONNECT-TIMEOUT
        options["connect_args"] = {"connect_timeout": 5}
    return options
{%- endif %}


def _origins(value: str) -> tuple[str, ...]:
    return tuple(
        origin.strip().rstrip("/").lower()
        for origin in value.split(",")
        if origin.strip()
    )
