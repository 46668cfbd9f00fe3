"""Prometheus metrics: every one the app keeps, and `GET /metrics`.

Each metric is counted where its decision is made: handshakes in
realtime/guards.py, sockets, messages and closes in realtime/connections.py
and realtime/outbox.py, chat delivery in realtime/hub.py.

Under gunicorn every worker is a process of its own, and a scrape reaches one
of them. So prometheus-client runs in its multiprocess mode there: each worker
writes its values to files in PROMETHEUS_MULTIPROC_DIR, which gunicorn.conf.py
creates and empties before the first worker starts, and /metrics on any worker
adds up every worker's files. Without that variable (`flask run`, the tests
that build the app in their own process) each process answers with its own
values. The mode is chosen when prometheus-client is first imported, from the
environment: gunicorn.conf.py sets the variable before any worker imports it.
https://prometheus.github.io/client_python/multiprocess/

An update is a lock (one for the whole process) and a write to a
memory-mapped file: about 1.5 µs for a counter, 7 µs for a histogram
observation, timed alone on a busy 2-core machine; in a busy worker, the two
counter updates of an echo cost 6 to 14 µs. So the sockets count their data
messages in integers of their own, which realtime/connections.py's
`MessageCounts` adds to WEBSOCKET_MESSAGES every second and as each socket
closes; a chat delivery costs one observation per socket.
"""

import os
import struct
import time
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if MULTIPROC_DIR:
    # Set by hand outside gunicorn (which creates it): values need a folder.
    Path(MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# Gauges of open sockets and capacity add up the workers that are alive: a
# worker that exited holds nothing (gunicorn.conf.py's child_exit removes its
# files).
WEBSOCKET_CONNECTIONS = Gauge(
    "websocket_connections",
    "WebSockets open now, by route.",
    ["route"],
    multiprocess_mode="livesum",
)
WEBSOCKET_CAPACITY = Gauge(
    "websocket_capacity",
    "WebSockets the workers admit together; websocket_connections over this "
    "is how full they are.",
    multiprocess_mode="livesum",
)
WEBSOCKET_HANDSHAKES = Counter(
    "websocket_handshakes",
    "WebSocket handshakes by outcome: accepted, or why refused.",
    ["outcome"],
)
WEBSOCKET_MESSAGES = Counter(
    "websocket_messages",
    "WebSocket data messages, by route and direction: in from clients, out to "
    "them (handed to the socket's outbox).",
    ["route", "direction"],
)
WEBSOCKET_CLOSES = Counter(
    "websocket_closes",
    "WebSockets ended, by the code of their closing handshake (whichever side "
    "began it); 1006 when the connection ended without one.",
    ["code"],
)
CHAT_DELIVERY = Histogram(
    "chat_delivery_seconds",
    "From a chat message's publication to its write on each socket that gets it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# The outcomes of a handshake (realtime/guards.py), and the HTTP status of each
# refusal.
ACCEPTED = "accepted"
FORBIDDEN_ORIGIN = "forbidden_origin"  # 403
UNAUTHENTICATED = "unauthenticated"  # 401
OVER_USER_LIMIT = "over_user_limit"  # 429
OVER_CAPACITY = "over_capacity"  # 503
UNAVAILABLE = "unavailable"  # 503: the count of users' sockets cannot be checked
OUTCOMES = (
    ACCEPTED,
    FORBIDDEN_ORIGIN,
    UNAUTHENTICATED,
    OVER_USER_LIMIT,
    OVER_CAPACITY,
    UNAVAILABLE,
)
# Each outcome's counter, bound once; the others are bound where they count.
HANDSHAKES = {outcome: WEBSOCKET_HANDSHAKES.labels(outcome) for outcome in OUTCOMES}

bp = Blueprint("metrics", __name__)

# A worker that starts or exits while a scrape reads the folder can leave a
# file there that is new and still empty, or gone between the listing and the
# reading; prometheus-client then fails (struct.error, FileNotFoundError). It
# lasts microseconds: read again, a few times.
READ_ATTEMPTS = 5


def check_mode() -> None:
    """Fail when this module was imported before gunicorn.conf.py named the
    folder (gunicorn's master loaded the app: --preload): every worker would
    count on its own, and /metrics would show one of them."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != MULTIPROC_DIR:
        raise RuntimeError(
            "prometheus-client was imported before PROMETHEUS_MULTIPROC_DIR was "
            "set; gunicorn's master must not load the app (no --preload)"
        )


def init_app(app: Flask) -> None:
    check_mode()
    if MULTIPROC_DIR:
        # Reads every worker's files at each scrape.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=MULTIPROC_DIR)
    else:
        registry = REGISTRY
    app.extensions["metrics_registry"] = registry
    app.register_blueprint(bp)


@bp.get("/metrics")
def metrics():
    """Prometheus's text format, for a scraper that reaches the app directly:
{%- if cookiecutter.use_docker == "y" %}
    nginx refuses it (deploy/nginx/templates/app/locations.conf.template).
{%- else %}
    a proxy in front must refuse it.
{%- endif %}
    """
    # Here too: under --preload the app was built before the folder was named.
    check_mode()
    registry = current_app.extensions["metrics_registry"]
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            text = generate_latest(registry)
            break
        except (struct.error, OSError):
            if attempt == READ_ATTEMPTS:
                raise
            time.sleep(0.01 * attempt)
    return Response(text, content_type=CONTENT_TYPE_LATEST)
