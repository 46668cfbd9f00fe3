"""Logs: lines for a terminal, or one JSON object per line for a log collector
(LOG_FORMAT=json), and a request id on every line of a request or a socket.

The request id comes from nginx's X-Request-ID when a trusted proxy sent the
request (TRUSTED_PROXY_COUNT, FORWARDED_ALLOW_IPS); otherwise the app makes
one. It is returned in the X-Request-ID header of every HTTP response, so a
client's report names the lines to read.

Under gunicorn, gunicorn.conf.py puts these formatters on gunicorn's error log
(which the app's lines share) and access log, and on the root logger, where
the lines of libraries go: the whole process writes one format.
"""

import json
import logging
import re
import sys
import traceback
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from flask import Flask, g, has_request_context, request

HEADER = "X-Request-ID"
# The same header in the WSGI environ, where a request's headers are read from.
HEADER_IN_ENVIRON = "HTTP_" + HEADER.upper().replace("-", "_")
# Where a request's id, user and route wait for gunicorn's access line, which
# is written after the app is done with the request (the WSGI environ).
ENVIRON_KEYS = {
    "request_id": "{{ cookiecutter.package_name }}.request_id",
    "user": "{{ cookiecutter.package_name }}.user",
    "route": "{{ cookiecutter.package_name }}.route",
}
# An id from a proxy is kept if it looks like one: nginx's are 32 hex digits,
# other proxies' UUIDs. Anything else (too long, a line break) is replaced.
WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Set by ProxyFix on a request that came through a trusted proxy (proxy.py).
FROM_TRUSTED_PROXY = "werkzeug.proxy_fix.orig"

# gunicorn's own line, and the request id after the message when there is one.
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"
# gunicorn's default access line (Apache's combined), then the request id.
ACCESS_TEXT_FORMAT = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
    "%({" + ENVIRON_KEYS["request_id"] + "}e)s"
)

# The attributes every LogRecord has: anything else was passed in `extra=`
# (close_code, duration...) and goes into the JSON object as it is.
RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


def init_app(app: Flask) -> None:
    """Give every request its id first (this runs before any other hook), and
    use the log format of LOG_FORMAT where gunicorn has not set one."""
    app.before_request(start_request)
    app.after_request(return_request_id)
    gunicorn_log = logging.getLogger("gunicorn.error")
    if gunicorn_log.handlers:
        # gunicorn's error log, already in LOG_FORMAT (gunicorn.conf.py).
        app.logger.handlers = gunicorn_log.handlers
        app.logger.setLevel(gunicorn_log.level)
        app.logger.propagate = False
    elif app.config["LOG_FORMAT"] == "json":
        # flask commands, `flask run`: Flask's handler writes text.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        app.logger.handlers = [handler]
        app.logger.propagate = False


def start_request() -> None:
    # Every request runs this: `request` looked up once, not five times.
    environ = request.environ
    request_id = environ.get(HEADER_IN_ENVIRON, "")
    trusted = FROM_TRUSTED_PROXY in environ
    if not (trusted and WELL_FORMED_ID.fullmatch(request_id)):
        request_id = uuid.uuid4().hex
    g.request_id = request_id
    environ[ENVIRON_KEYS["request_id"]] = request_id
    if (rule := request.url_rule) is not None:
        environ[ENVIRON_KEYS["route"]] = rule.rule


def note_user(user_id: int) -> None:
    """The request is the user's (auth/loaders.py): say so on its lines."""
    if has_request_context():
        g.log_user = user_id
        request.environ[ENVIRON_KEYS["user"]] = user_id


def return_request_id(response):
    if request_id := g.get("request_id"):
        response.headers[HEADER] = request_id
    return response


def request_fields() -> dict:
    """The request id, user and route of the request being served, if any.

    A socket's lines written from another thread (a chat delivery) pass their
    own in `extra=` (realtime/connections.py), which win over these."""
    if not has_request_context():
        return {}
    # Each use of `g` or `request` looks its object up again: once each here.
    request_globals = g._get_current_object()
    fields = {
        "request_id": request_globals.get("request_id"),
        "user": request_globals.get("log_user"),
    }
    if (rule := request.url_rule) is not None:
        fields["route"] = rule.rule
    return fields


class TextFormatter(logging.Formatter):
    """gunicorn's line, with the request id at its end."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, TEXT_DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None) or request_fields().get(
            "request_id"
        )
        if request_id:
            line = f"{line} [request {request_id}]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid,
    message; request_id, user and route when known; whatever the call passed
    in `extra=`; the traceback of an exception as one string. gunicorn's
    access lines carry the request's method, path, status, bytes, duration
    (seconds) and client instead."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            fields.update(access_fields(record.args))
        else:
            fields["message"] = record.getMessage()
            for key, value in request_fields().items():
                if value is not None:
                    fields[key] = value
            for key, value in vars(record).items():
                if key not in RECORD_ATTRIBUTES:
                    fields[key] = value
        if record.exc_info:
            fields["exception"] = "".join(
                traceback.format_exception(*record.exc_info)
            ).rstrip()
        elif record.stack_info:
            fields["stack"] = record.stack_info
        return ENCODER.encode(fields)


# One encoder for every line: json.dumps(fields, default=str) makes a new one
# each time. Whatever JSON cannot hold (a datetime in `extra=`) becomes text.
ENCODER = json.JSONEncoder(default=str)
# The second of the last line, and its text: lines come many a second.
_last_second: tuple[int, str] = (-1, "")


def utc_time(created: float) -> str:
    """ISO 8601 in UTC, to the millisecond: 2026-11-29T21:08:24.733+00:00"""
    global _last_second
    # Rounded to the microsecond first, as datetime.fromtimestamp rounds.
    second = int(created)
    microseconds = round((created - second) * 1_000_000)
    if microseconds == 1_000_000:
        second, microseconds = second + 1, 0
    seen, text = _last_second
    if second != seen:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        # One assignment of a pair: a thread reading it meanwhile sees the
        # old pair or the new one, never half of each.
        _last_second = (second, text)
    return f"{text}.{microseconds // 1000:03d}+00:00"


def access_fields(atoms: Mapping) -> dict:
    """gunicorn's access atoms as fields.
    https://docs.gunicorn.org/en/stable/settings.html#access-log-format"""
    fields = {
        "message": f'"{atoms["r"]}" {atoms["s"]}',
        "method": atoms["m"],
        "path": atoms["U"],
        "query": atoms["q"],
        "status": int(atoms["s"]) if str(atoms["s"]).isdigit() else atoms["s"],
        "bytes": atoms["B"],
        "duration": atoms["D"] / 1_000_000,
        "client": atoms["h"],
        "user_agent": atoms["a"],
    }
    for field, key in ENVIRON_KEYS.items():
        value = atoms["{" + key + "}e"]
        if value != "-":
            fields[field] = value
    return fields


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_process(log_format: str) -> None:
    """Before anything else logs (gunicorn.conf.py): what reaches the root
    logger (libraries' warnings, the settings' own) is written in
    `log_format` to stderr; with json, Python's warnings too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.getLogger().handlers = [handler]
    logging.captureWarnings(log_format == "json")
    # What no line here shows, and every line would pay for (3 % of the
    # instructions of a WebSocket's handshake, which writes two lines): where
    # in the code it was written (funcName, lineno, pathname: a walk up the
    # stack), its thread (threadName), and `processName`, which in a gunicorn
    # worker only ever says MainProcess. A format that shows those, or a call
    # with stack_info=True, needs the first two back as they were.
    # https://docs.python.org/3/howto/logging.html#optimization
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
