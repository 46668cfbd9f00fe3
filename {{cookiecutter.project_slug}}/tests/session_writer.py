"""A test-only app: the real one plus a WebSocket handler that changes the
session, behind the same guard as every socket route."""

from flask import Blueprint, session
from flask_login import login_required

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.extensions import sock
from {{ cookiecutter.package_name }}.realtime.connections import websocket_handler
from {{ cookiecutter.package_name }}.realtime.guards import (
    admit_handshake,
    release_places,
)

bp = Blueprint("session_writer", __name__)
bp.before_request(admit_handshake)
bp.teardown_request(release_places)


@sock.route("/ws/session-writer", bp=bp)
@login_required
@websocket_handler
def write_session(connection) -> None:
    connection.send(f"visits before: {session.get('visits', 0)}")
    session["visits"] = session.get("visits", 0) + 1
    connection.send("changed the session")
    while True:
        connection.send(connection.receive())


def create_session_writer_app():
    app = create_app()
    app.register_blueprint(bp)
    return app
