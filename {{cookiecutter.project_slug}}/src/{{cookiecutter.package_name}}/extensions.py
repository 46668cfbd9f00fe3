"""Extensions, created unbound here and bound to the app in `create_app`."""

import click
from flask import current_app
from flask.cli import AppGroup
from flask_login import LoginManager
from flask_sock import Sock
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
login_manager = LoginManager()
csrf = CSRFProtect()
sock = Sock()


class MigrationCommands(AppGroup):
    """`flask db ...`: Flask-Migrate's commands (Alembic's migrations).

    Flask-Migrate, and Alembic with it, are imported when a `db` command runs:
    a tenth of the app's import, which every gunicorn start would otherwise
    pay for commands it never runs. The group then takes Flask-Migrate's own
    options (`--directory`, `-x`) and the callback that keeps them for its
    commands."""

    def _commands(self) -> click.Group:
        from flask_migrate import Migrate
        from flask_migrate.cli import db as commands

        if "migrate" not in current_app.extensions:
            Migrate(current_app._get_current_object(), db)
        return commands

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        commands = self._commands()
        self.params, self.callback = commands.params, commands.callback
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._commands().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._commands().get_command(ctx, name)


migration_commands = MigrationCommands(
    "db", help="Perform database migrations (Flask-Migrate, Alembic)."
)
