"""Settings, read from the environment (and `.env`) here and nowhere else.

Each field is named after its environment variable, and the app reads it by
that name from `app.config`. Every one is listed in `.env.example` and in the
README's settings table.
https://docs.pydantic.dev/latest/concepts/pydantic_settings/
"""

import ipaddress
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args

from limits import parse_many
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
{%- if cookiecutter.broadcast == "redis" %}
from redis.backoff import NoBackoff
from redis.retry import Retry
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
        self.message = message


def default_log_format(app_env: str | None) -> str:
    """What a production server's logs are read by is a log collector; a
    developer reads a terminal."""
    return "json" if app_env == "production" else "text"


def wrong(message: str, given: object) -> PydanticCustomError:
    """A setting's problem, as said after its name."""
    return PydanticCustomError("setting", message, {"given": repr(given)})


def rate(value: str) -> str:
    """A rate such as `30/minute` or `5 per 10 seconds`, or several separated
    by `;`, in the notation of the limits library:
    https://limits.readthedocs.io/en/stable/quickstart.html#rate-limit-string-notation
    """
    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if not items or any(item.amount < 1 for item in items):
        raise wrong("must be a rate such as 30/minute, got {given}", value)
    return value


def comma_list(value: str | tuple[str, ...]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def networks(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """IP addresses or networks (CIDR); `*` means any."""
    for address in addresses:
        if address == "*":
            continue
        try:
            ipaddress.ip_network(address)
        except ValueError:
            raise wrong(
                "must list IP addresses or networks, got {given}", address
            ) from None
    return addresses


def origins(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(origin.rstrip("/").lower() for origin in values)


def or_loopback(host: str) -> str:
    return host or "127.0.0.1"


def psycopg_url(value: str | None) -> str | None:
    """Point PostgreSQL URLs at psycopg 3, whichever spelling was given."""
    for prefix in ("postgres://", "postgresql://"):
        if value and value.startswith(prefix):
            return "postgresql+psycopg://" + value.removeprefix(prefix)
    return value or None


Count = Annotated[int, Field(ge=1)]
LogFormat = Literal["text", "json"]
Rate = Annotated[str, AfterValidator(rate)]
# NoDecode: a comma list, not the JSON that pydantic-settings expects by default.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(comma_list)]


class Settings(BaseSettings):
    # The environment wins over `.env` (in the working directory); other
    # variables are not settings.
    # https://docs.pydantic.dev/latest/concepts/pydantic_settings/#dotenv-env-support
    model_config = SettingsConfigDict(
        env_file=".env",
        case_sensitive=True,
        extra="ignore",
        str_strip_whitespace=True,
        frozen=True,
    )

    APP_ENV: Literal["production", "development", "testing"] = "production"
    SECRET_KEY: str = ""
    # None: a SQLite file in the instance folder.
    DATABASE_URL: Annotated[str | None, AfterValidator(psycopg_url)] = None
{%- if cookiecutter.broadcast == "redis" %}
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
{%- endif %}
    ALLOWED_ORIGINS: Annotated[CommaList, AfterValidator(origins)] = ()
    # 0 turns pings off.
    WS_PING_INTERVAL: Annotated[float, Field(ge=0)] = 25
    WS_MAX_MESSAGE_SIZE: Count = 65536
    WS_COMPRESSION: bool = False
    WS_SEND_QUEUE_LIMIT: Count = 1024 * 1024
    WS_MAX_SOCKETS_PER_USER: Count = 10
    WS_MAX_MESSAGES_PER_SECOND: Count = 20
    TOKEN_MAX_AGE: Count = 3600
    AUTH_LIMIT_PER_ADDRESS: Rate = "30/minute"
    AUTH_LIMIT_PER_ACCOUNT: Rate = "5/minute"
    TRUSTED_PROXY_COUNT: Annotated[int, Field(ge=0)] = 0
    # gunicorn's own default, and the same variable gunicorn reads.
    FORWARDED_ALLOW_IPS: Annotated[CommaList, AfterValidator(networks)] = (
        "127.0.0.1",
        "::1",
    )
    HOST: Annotated[str, AfterValidator(or_loopback)] = "127.0.0.1"
    PORT: Count = 8000
{%- if cookiecutter.broadcast == "redis" %}
    # Redis carries chat between workers, so one per core of a small machine.
    WEB_CONCURRENCY: Count = 2
{%- else %}
    # One: the in-process chat hub reaches only the sockets of its own worker.
    WEB_CONCURRENCY: Count = 1
{%- endif %}
{%- if cookiecutter.worker_class == "gevent" %}
    GUNICORN_WORKER_CONNECTIONS: Count = 1000
{%- else %}
    GUNICORN_THREADS: Count = 100
{%- endif %}
    # The variable prometheus-client reads. Empty: gunicorn.conf.py makes a
    # folder of its own in the system's temporary folder for each start.
    PROMETHEUS_MULTIPROC_DIR: str = ""
    # text: gunicorn's lines, for a terminal; json: one object per line, for a
    # log collector. Empty: json in production, text otherwise (logs.py).
    LOG_FORMAT: Annotated[LogFormat, Field(validate_default=True)] = ""

    @field_validator("SECRET_KEY")
    @classmethod
    def secret_key(cls, value: str, info: ValidationInfo) -> str:
        app_env = info.data.get("APP_ENV")
        if app_env is None:  # APP_ENV is wrong, and said so
            return value
        if not value:
            if app_env == "production":
                raise wrong(f"is not set; {GENERATE_KEY_HINT}", value)
            # A key nobody else knows, so that `flask` commands and a first run
            # work before `.env` exists; sessions and tokens end with the process.
            logging.getLogger(__name__).warning(
                "SECRET_KEY is not set: using a random key until this process "
                "stops, so logins will not survive a restart; %s",
                GENERATE_KEY_HINT,
            )
            return secrets.token_urlsafe(48)
        if value.lower() in PLACEHOLDER_SECRET_KEYS and app_env != "testing":
            raise wrong(f"is a placeholder; {GENERATE_KEY_HINT}", value)
        if len(value) < MIN_SECRET_KEY_LENGTH and app_env == "production":
            raise wrong(
                f"is {len(value)} characters long, at least "
                f"{MIN_SECRET_KEY_LENGTH} are needed; {GENERATE_KEY_HINT}",
                value,
            )
        return value

    @classmethod
    def from_env(cls, config: Mapping[str, str] | None = None) -> "Settings":
        """The settings of the environment, completed by `.env` in the working
        directory; or those of `config` (by variable name), completed by the
        environment alone. A wrong one stops here with one line."""
        try:
            if config is None:
                return cls()
            return cls(_env_file=None, **config)
        except ValidationError as error:
            raise ConfigError(one_line(error)) from None

    @field_validator("LOG_FORMAT", mode="before")
    @classmethod
    def log_format(cls, value: str, info: ValidationInfo) -> str:
        return value or default_log_format(info.data.get("APP_ENV"))

    @classmethod
    def log_format_from_env(cls) -> str:
        """LOG_FORMAT alone, read before the other settings so that what
        reading them says is written in it; text while it is wrong (and
        `from_env` says so)."""

        class Early(BaseSettings):
            model_config = cls.model_config
            APP_ENV: str = "production"
            LOG_FORMAT: str = ""

        try:
            early = Early()
        except ValidationError:
            return "text"
        log_format = early.LOG_FORMAT or default_log_format(early.APP_ENV)
        return log_format if log_format in get_args(LogFormat) else "text"

    @property
    def websockets_per_worker(self) -> int:
        """Sockets one worker admits: the requests it serves at once, less a
        reserve that keeps HTTP (health checks, logins) answering when
        sockets fill the rest."""
{%- if cookiecutter.worker_class == "gevent" %}
        concurrency = self.GUNICORN_WORKER_CONNECTIONS
{%- else %}
        concurrency = self.GUNICORN_THREADS
{%- endif %}
        reserve = max(2, concurrency // 10)
        return max(1, concurrency - reserve)

    def flask_config(self, instance_path: str) -> dict:
        """The Flask configuration: every setting by its name, and what the
        extensions need from them."""
        production = self.APP_ENV == "production"
        database_url = (
            self.DATABASE_URL or f"sqlite:///{Path(instance_path) / 'app.db'}"
        )
        return {
            **self.model_dump(),
            "TESTING": self.APP_ENV == "testing",
            "SQLALCHEMY_DATABASE_URI": database_url,
{%- if cookiecutter.database == "postgresql" %}
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options(database_url),
{%- else %}
            # SQLite is a file, with no server to restart under a pooled
            # connection: no pre-ping, which would cost every request a query.
            "SQLALCHEMY_ENGINE_OPTIONS": {},
{%- endif %}
            # Where auth/limits.py counts tries at passwords (AUTH_LIMIT_PER_*).
            "ATTEMPTS_KEY_PREFIX": "{{ cookiecutter.package_name }}",
{%- if cookiecutter.broadcast == "redis" %}
            # Shared by every worker and instance. With Redis down each worker
            # counts on its own rather than refuse every login.
            "ATTEMPTS_STORAGE_URI": self.REDIS_URL,
            # Given up on after 2 s, not resent: redis-py's default retries
            # would hold a login for many seconds while Redis is away.
            "ATTEMPTS_STORAGE_OPTIONS": {
                "socket_connect_timeout": 2,
                "socket_timeout": 2,
                "retry": Retry(NoBackoff(), 0),
            },
{%- else %}
            # Counted in each worker's memory: exact with one worker
            # (WEB_CONCURRENCY=1, the default here), per worker with more.
            "ATTEMPTS_STORAGE_URI": "memory://",
{%- endif %}
            "WEBSOCKETS_PER_WORKER": self.websockets_per_worker,
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
                "ping_interval": self.WS_PING_INTERVAL or None,
                "max_message_size": self.WS_MAX_MESSAGE_SIZE,
            },
        }


# What a value must be, by pydantic's error type.
# https://docs.pydantic.dev/latest/errors/validation_errors/
MUST_BE = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "bool_parsing": "on or off",
}


def one_line(error: ValidationError) -> str:
    """Each wrong setting by its name: what it must be, and what was given."""
    problems = []
    for problem in error.errors():
        name, given, kind = problem["loc"][0], problem["input"], problem["type"]
        if kind == "setting":
            problems.append(f"{name} {problem['msg']}")
        elif kind == "greater_than_equal":
            minimum = problem["ctx"]["ge"]
            problems.append(f"{name} must be at least {minimum:g}, got {given}")
        elif kind == "literal_error":
            choices = ", ".join(get_args(Settings.model_fields[name].annotation))
            problems.append(f"{name} is {given!r}; use one of {choices}")
        elif kind in MUST_BE:
            problems.append(f"{name} must be {MUST_BE[kind]}, got {given!r}")
        else:
            problems.append(f"{name}: {problem['msg']}, got {given!r}")
    return "; ".join(problems)
{%- if cookiecutter.database == "postgresql" %}


def engine_options(database_url: str) -> dict:
    if not database_url.startswith("postgresql"):
        return {}  # SQLite: a file, with no server to restart
    return {
        # Check a pooled connection before use: the server may have restarted
        # since. https://docs.sqlalchemy.org/en/20/core/pooling.html#pool-disconnects
        "pool_pre_ping": True,
        # A server that does not answer fails a request in seconds (503)
        # instead of holding its thread for minutes.
        # https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-CONNECT-TIMEOUT
        "connect_args": {"connect_timeout": 5},
    }
{%- endif %}
