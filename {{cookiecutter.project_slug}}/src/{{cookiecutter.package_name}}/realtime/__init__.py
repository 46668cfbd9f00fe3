"""Every WebSocket rule in one place: the handshake guard, the routes, the hub."""

from flask import Blueprint, Flask

bp = Blueprint("realtime", __name__)

from . import guards, routes  # noqa: E402,F401  (they register on bp)
from .connections import OpenConnections, websocket_reader  # noqa: E402
from .hub import create_hub  # noqa: E402
from .revocations import CredentialCheck, closer  # noqa: E402
from .session import WebSocketSessionInterface  # noqa: E402
from .user_sockets import UserSockets  # noqa: E402


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.session_interface = WebSocketSessionInterface()
    # Every socket's reader thread: see websocket_reader.
    app.config["SOCK_SERVER_OPTIONS"]["thread_class"] = websocket_reader
    hub = app.extensions["chat_hub"] = create_hub(app)
    connections = app.extensions["open_connections"] = OpenConnections(
        app.config["WEBSOCKETS_PER_WORKER"]
    )
    # Both ways a revocation reaches this worker close the user's sockets here.
    close_revoked = closer(connections, app.logger)
    hub.on_revoke(close_revoked)
    app.extensions["credential_check"] = CredentialCheck(
        app, connections, close_revoked
    )
    app.extensions["user_sockets"] = create_user_sockets(app)


def create_user_sockets(app: Flask) -> UserSockets:
    limit = app.config["WS_MAX_SOCKETS_PER_USER"]
{%- if cookiecutter.broadcast == "redis" %}
    from .redis_user_sockets import RedisUserSockets

    return RedisUserSockets(limit, app.config["REDIS_URL"], app.logger)
{%- else %}
    return UserSockets(limit)
{%- endif %}
