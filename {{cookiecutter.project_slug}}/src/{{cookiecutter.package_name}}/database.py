"""`flask --app {{ cookiecutter.package_name }} create-database`: creates the PostgreSQL
database that DATABASE_URL names when it is missing, so that `db upgrade` has
somewhere to create the tables. `make dev` runs both.

It logs in as DATABASE_URL's user, on its server, to the `postgres`
maintenance database (where `createdb` connects too), and the new database
belongs to that user. https://www.postgresql.org/docs/current/app-createdb.html
"""

import shlex

import click
import psycopg
from flask import current_app
from flask.cli import with_appcontext
from psycopg import errors, sql
from sqlalchemy.engine import URL, make_url

MAINTENANCE_DATABASE = "postgres"
# Seconds to wait for the server, as the app does (config.py).
CONNECT_TIMEOUT = 5
DEFAULT_PORT = 5432


@click.command("create-database")
@with_appcontext
def create_database() -> None:
    """Create the database DATABASE_URL names, unless it exists."""
    url = make_url(current_app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() != "postgresql":
        click.echo(f"nothing to create: DATABASE_URL is {url.get_backend_name()}")
        return
    name = url.database
    if not name:
        raise SystemExit("error: DATABASE_URL names no database; end it with /NAME")
    server = f"{url.host or 'localhost'}:{url.port or DEFAULT_PORT}"
    with connect_to_maintenance_database(url, server) as connection:
        found = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if found:
            click.echo(f'database "{name}" exists on {server}')
            return
        try:
            connection.execute(
                sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            )
        except errors.DuplicateDatabase:  # created meanwhile by someone else
            click.echo(f'database "{name}" exists on {server}')
            return
        except errors.InsufficientPrivilege:
            raise SystemExit(
                f'error: PostgreSQL user "{url.username}" may not create databases '
                f"on {server}; create it as one who may: {createdb_command(url)}"
            ) from None
    click.echo(f'created database "{name}" on {server}')


def connect_to_maintenance_database(url: URL, server: str) -> psycopg.Connection:
    # CREATE DATABASE cannot run inside a transaction: autocommit.
    conninfo = url.set(
        drivername="postgresql", database=MAINTENANCE_DATABASE
    ).render_as_string(hide_password=False)
    try:
        return psycopg.connect(
            conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
    except psycopg.OperationalError as error:
        # The server's own refusals (a wrong user or password) are FATAL
        # messages; anything else never got an answer from it.
        reason = connection_failure(error)
        if "FATAL:" in str(error):
            raise SystemExit(
                f"error: PostgreSQL on {server} refused the connection: {reason}; "
                "check DATABASE_URL in .env"
            ) from None
        raise SystemExit(
            f"error: cannot reach PostgreSQL at {server}: {reason}; "
            "start it or set DATABASE_URL in .env"
        ) from None


def connection_failure(error: psycopg.OperationalError) -> str:
    """libpq's reason without its preamble: `connection to server at "host",
    port 5432 failed: Connection refused` becomes `Connection refused`."""
    first_line = str(error).strip().splitlines()[0]
    return first_line.rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()


def createdb_command(url: URL) -> str:
    command = ["createdb"]
    if url.host:
        command += ["-h", url.host]
    command += ["-p", str(url.port or DEFAULT_PORT)]
    if url.username:
        command += ["-O", url.username]
    return shlex.join([*command, url.database])
