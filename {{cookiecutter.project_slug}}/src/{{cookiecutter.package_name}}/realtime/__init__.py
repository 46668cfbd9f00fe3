"""Every WebSocket rule in one place: the handshake guard, the routes, the hub."""

from flask import Blueprint, Flask

bp = Blueprint("realtime", __name__)

from . import guards, routes  # noqa: E402,F401  (they register on bp)
from .connections import OpenConnections  # noqa: E402
from .hub import create_hub  # noqa: E402
from .session import WebSocketSessionInterface  # noqa: E402


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.session_interface = WebSocketSessionInterface()
    app.extensions["chat_hub"] = create_hub(app)
    app.extensions["open_connections"] = OpenConnections(
        app.config["WEBSOCKETS_PER_WORKER"]
    )
