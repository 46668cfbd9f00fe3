"""The application factory: `create_app()` builds the app from the settings."""

from collections.abc import Mapping
from pathlib import Path

from flask import Flask, Response, g

from . import logs
from .config import Settings
from .errors import register_error_handlers
from .extensions import csrf, db, login_manager, migration_commands, sock
from .proxy import trust_forwarded_headers
from .security import register_security_headers


class App(Flask):
    """Flask, without the work on a response that is never sent.

    A WebSocket's request ends when its socket closes. Flask then runs every
    `after_request` hook on the view's response (the security headers, the
    request id, Flask-Login's remember cookie) and saves the session into it.
    None of that reaches the client: the 101 went out before the handler ran,
    and the connection is over. When a deploy closes thousands of sockets at
    once, that work took a sixth to a third of the CPU each close cost the
    stopping worker (measured in the template's benchmarks): CPU that the
    clients coming back to the new workers wait for. A handshake refused before
    its 101 (401, 403, 429, 503) is an HTTP response like any other and gets
    all of it; the teardown hooks run for every request.
    """

    def process_response(self, response: Response) -> Response:
        if g.get("websocket_closed"):  # set by realtime.connections
            return response
        return super().process_response(response)


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app.

    `config` takes settings by their environment names (`SECRET_KEY`,
    `DATABASE_URL`...) and wins over the environment (`.env` is then not
    read); tests use it.
    """
    settings = Settings.from_env(config)

    app = App(__name__)
    app.config.from_mapping(settings.flask_config(app.instance_path))
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    # First: every request gets its id before any other hook may log.
    logs.init_app(app)

    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    register_error_handlers(app)
    register_security_headers(app)
    trust_forwarded_headers(app)
    return app


def register_extensions(app: Flask) -> None:
    db.init_app(app)
    app.cli.add_command(migration_commands)
    csrf.init_app(app)
    login_manager.init_app(app)
    sock.init_app(app)


def register_blueprints(app: Flask) -> None:
    from . import auth, health, metrics, pages, realtime

    app.register_blueprint(health.bp)
    metrics.init_app(app)
    auth.init_app(app)
    app.register_blueprint(pages.bp)
    realtime.init_app(app)


def register_commands(app: Flask) -> None:
    from .auth.cli import users
{%- if cookiecutter.database == "postgresql" %}
    from .database import create_database
{%- endif %}

    app.cli.add_command(users)
{%- if cookiecutter.database == "postgresql" %}
    app.cli.add_command(create_database)
{%- endif %}
