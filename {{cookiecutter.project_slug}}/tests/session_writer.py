"""A test-only app: the real one plus a WebSocket handler that changes the
session, declared as every socket route is, and one route declared with a plain
`sock.route`, which the app refuses."""

from flask import Blueprint, session

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.extensions import sock
from {{ cookiecutter.package_name }}.realtime.guards import websocket_route

bp = Blueprint("session_writer", __name__)


@websocket_route("/ws/session-writer", bp=bp)
def write_session(connection) -> None:
    connection.send(f"visits before: {session.get('visits', 0)}")
    session["visits"] = session.get("visits", 0) + 1
    connection.send("changed the session")
    while True:
        connection.send(connection.receive())


@sock.route("/ws/undeclared", bp=bp)
def undeclared(ws) -> None:
    while True:
        ws.send(ws.receive())


def create_session_writer_app():
    app = create_app()
    app.register_blueprint(bp)
    return app
