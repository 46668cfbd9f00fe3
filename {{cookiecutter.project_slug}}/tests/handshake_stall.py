"""A test-only app: the real one, taking on HANDSHAKES_AT_ONCE handshakes at
a time, whose WebSocket handshakes wait, once admitted and counted, for as long
as the file that STALL_FILE names exists."""

import os
import time
from pathlib import Path

from flask import request

from {{ cookiecutter.package_name }} import create_app

HANDSHAKES_AT_ONCE = 2


def create_stalling_app():
    app = create_app()
    app.extensions["open_connections"].handshakes_at_once = HANDSHAKES_AT_ONCE
    stall = Path(os.environ["STALL_FILE"])

    # After the app's own before_request, which counts and admits the handshake.
    @app.before_request
    def wait_while_the_file_exists() -> None:
        rule = request.url_rule
        if rule is not None and rule.websocket:
            while stall.exists():
                time.sleep(0.02)

    return app
