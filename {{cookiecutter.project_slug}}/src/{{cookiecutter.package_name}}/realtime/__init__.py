"""Every WebSocket rule in one place.

A route is declared with `websocket_route` (guards.py), as in routes.py. The
path of one handshake, in order, and where each step lives:

1. Behind a trusted proxy, the client's address, scheme and host come from
   its X-Forwarded-* headers (../proxy.py).
2. The session opens as one that can turn read-only
   (`WebSocketSessionInterface`, session.py).
3. `before_websocket_handshake` (guards.py), a `before_request`, refuses a
   route not declared with `websocket_route` (500) and a handshake past the
   HANDSHAKES_AT_ONCE this worker has under way (503; connections.py), then
   `admit_by_origin_login_and_room` (guards.py) checks the Origin (403), the
   login (401; ../auth/loaders.py reads the user's id, email and credential
   version, as a `SocketUser`, for the cookie or the bearer token), the
   user's sockets (429; user_sockets.py
{%- if cookiecutter.broadcast == "redis" %},
   redis_user_sockets.py: a place leased from Redis
{%- endif %})
   and the worker's room (503; `OpenConnections.reserve` in
   connections.py). Then the session turns read-only.
4. Flask-Sock answers 101. simple-websocket starts the socket's reader through
   `websocket_reader` (connections.py), which puts an `Outbox` (outbox.py)
   between the socket and every write.{% if cookiecutter.worker_class == "gthread" %} The handler waits for what the reader
   receives on a `Flag` (outbox.py).{% endif %} The worker's `Pinger`
   (connections.py), not the reader, pings the socket every WS_PING_INTERVAL.
5. `login_required` checks the login again, a second lock.
6. `websocket_handler` (connections.py) wraps the socket in a `Connection`,
   counted for the shutdown close and for revocations (revocations.py).
7. The route's handler (routes.py) runs; the chat subscribes to the hub
   (hub.py
{%- if cookiecutter.broadcast == "redis" %}, redis_hub.py
{%- endif %}).
8. Once it is closed, Flask skips its `after_request` hooks and the session's
   save, whose response is never sent (`App`, ../__init__.py), and
   `release_places` (guards.py), a `teardown_request`, gives the socket's
   places back{% if cookiecutter.broadcast == "redis" %} (its lease goes back to
   Redis at once){% endif %}.

Here, `init_app` also chooses the hub and the count of users' sockets that
this project uses.
"""

from flask import Flask

from .. import metrics
from .connections import (
    COUNT_MESSAGES_EVERY,
    MessageCounts,
    OpenConnections,
    Pinger,
    websocket_reader,
)
from .guards import before_websocket_handshake, release_places
{%- if cookiecutter.broadcast == "redis" %}
from .hub import Hub
{%- else %}
from .hub import Hub, MemoryHub
{%- endif %}
{%- if cookiecutter.worker_class == "gthread" %}
from .outbox import Flag
{%- endif %}
{%- if cookiecutter.broadcast == "redis" %}
from .redis_hub import RedisHub
from .redis_user_sockets import RedisUserSockets
{%- endif %}
from .revocations import CredentialCheck, closer
from .routes import bp
from .session import WebSocketSessionInterface
from .user_sockets import UserSockets


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.before_request(before_websocket_handshake)
    app.teardown_request(release_places)
    app.session_interface = WebSocketSessionInterface()
    # Every socket's reader thread: see websocket_reader.
    app.config["SOCK_SERVER_OPTIONS"]["thread_class"] = websocket_reader
{%- if cookiecutter.worker_class == "gthread" %}
    # What each handler waits on for its reader: see Flag.
    app.config["SOCK_SERVER_OPTIONS"]["event_class"] = Flag
{%- endif %}
    hub = app.extensions["chat_hub"] = create_hub(app)
    connections = app.extensions["open_connections"] = OpenConnections(
        app.config["WEBSOCKETS_PER_WORKER"]
    )
    # Each worker's share; /metrics adds up the workers alive.
    metrics.WEBSOCKET_CAPACITY.set(connections.capacity)
    # One {% if cookiecutter.worker_class == "gevent" %}greenlet{% else %}thread{% endif %} pings every socket of the worker, instead of each reader.
    if interval := app.config["SOCK_SERVER_OPTIONS"].get("ping_interval"):
        app.extensions["pinger"] = Pinger(connections, interval, app.logger)
    app.extensions["message_counts"] = MessageCounts(
        connections, COUNT_MESSAGES_EVERY, app.logger
    )
    # Both ways a revocation reaches this worker close the user's sockets here.
    close_revoked = closer(connections, app.logger)
    hub.on_revoke(close_revoked)
    app.extensions["credential_check"] = CredentialCheck(
        app, connections, close_revoked
    )
    app.extensions["user_sockets"] = create_user_sockets(app)


def create_hub(app: Flask) -> Hub:
{%- if cookiecutter.broadcast == "redis" %}
    return RedisHub(app.config["REDIS_URL"], app.logger)
{%- else %}
    return MemoryHub()
{%- endif %}


def create_user_sockets(app: Flask) -> UserSockets:
    limit = app.config["WS_MAX_SOCKETS_PER_USER"]
{%- if cookiecutter.broadcast == "redis" %}
    return RedisUserSockets(limit, app.config["REDIS_URL"], app.logger)
{%- else %}
    return UserSockets(limit)
{%- endif %}
