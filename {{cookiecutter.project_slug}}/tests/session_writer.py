"""A test-only app: the real one plus a WebSocket handler that changes the
session and one that shows what it sees of its request, declared as every
socket route is, one route declared with a plain `sock.route`, which the app
refuses, and an `after_request` and a `teardown_request` hook that log the
WebSocket paths they run for."""

import json

from flask import Blueprint, current_app, request, session
from flask_login import current_user

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


@websocket_route("/ws/request", bp=bp)
def show_request(connection) -> None:
    connection.send(
        json.dumps(
            {
                "path": request.path,
                "args": request.args.to_dict(),
                "remote_addr": request.remote_addr,
                "headers": sorted(request.headers.keys()),
                "logged_in": "_user_id" in session,
                "user": current_user.email,
            }
        )
    )
    while True:
        connection.send(connection.receive())


@sock.route("/ws/undeclared", bp=bp)
def undeclared(ws) -> None:
    while True:
        ws.send(ws.receive())


@bp.after_app_request
def log_after_request(response):
    if request.path.startswith("/ws/"):
        current_app.logger.info(
            "after_request ran for %s (%d)", request.path, response.status_code
        )
    return response


@bp.teardown_app_request
def log_teardown(_error):
    # After `after_request`, when it runs: the request is over.
    if request.path.startswith("/ws/"):
        current_app.logger.info("teardown ran for %s", request.path)


def create_session_writer_app():
    app = create_app()
    app.register_blueprint(bp)
    return app
