"""database = postgresql: while PostgreSQL is down, requests that need it get
503 with Retry-After (never a 500 and a traceback), open sockets stay open,
and the service recovers on its own when PostgreSQL is back.

The test runs a PostgreSQL cluster of its own, which it stops and starts;
the suite's shared server is left alone.
"""

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
import requests
from websockets.exceptions import InvalidStatus

from {{ cookiecutter.package_name }}.errors import MESSAGE, RETRY_AFTER_SECONDS

from .conftest import (
    PASSWORD,
    bearer_token,
    echoes,
    free_port,
    log_in,
    open_socket,
    require,
    run_flask,
    stop_process,
    submit_form,
    wait_until_started,
)

# A sentence of templates/errors/unavailable.html.
UNAVAILABLE_PAGE = "The service cannot reach its database right now."
# The app's warning for each request it refuses (readyz logs its own).
REFUSAL_LOGGED = re.compile(r"\[WARNING\] database unavailable: ")


def postgres_bindir() -> Path | None:
    """Where initdb and postgres are: pg_config's answer, Debian's versioned
    folders (newest first), or the PATH."""
    candidates = []
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        candidates.append(Path(result.stdout.strip()))
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.name)],
        reverse=True,
    )
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


class Cluster:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.process = None
        # PostgreSQL refuses to run as root. As root (CI containers), the
        # cluster belongs to the `postgres` user, in a folder of /tmp that
        # user can reach (pytest's own tmp folder is private to root).
        self.run_as = {}
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                require(False, "running as root needs a `postgres` user for initdb")
            self.run_as = {
                "user": owner.pw_uid,
                "group": owner.pw_gid,
                "extra_groups": [],
            }
        self.root = Path(tempfile.mkdtemp(prefix="pg-outage-"))
        if self.run_as:
            os.chown(self.root, self.run_as["user"], self.run_as["group"])
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def initdb(self) -> None:
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data)]
            + ["-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"]
            + ["--no-sync"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self.run_as,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def start(self) -> None:
        """Start (or start again, on the same port and data) and wait until it
        accepts connections."""
        command = [str(self.bindir / "postgres"), "-D", str(self.data)]
        command += ["-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.root)]
        # Durability is worthless for a test's data; speed is not.
        command += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        command += ["-c", "full_page_writes=off"]
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, **self.run_as
            )
        wait_until_started(self.process, self.accepts, timeout=60, log=self.log)

    def accepts(self) -> bool:
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            # Not listening yet, or "the database system is starting up".
            return False

    def stop(self) -> None:
        """A fast shutdown (SIGINT): open sessions are cut, as in an outage;
        the default smart shutdown would wait for the app's pooled ones."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(self.process, timeout=10)
        assert self.process.returncode == 0, f"postgres stopped badly:\n{self.log()}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    bindir = postgres_bindir()
    require(
        bindir is not None,
        "PostgreSQL's initdb and postgres are not installed "
        "(Debian: apt-get install postgresql); they are needed to stop a database",
    )
    cluster = Cluster(bindir)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
        cluster.stop()
    finally:
        cluster.remove()


def assert_unavailable_page(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert UNAVAILABLE_PAGE in response.text


def assert_unavailable_json(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert response.json() == {"error": MESSAGE}


def assert_clean_log(server) -> None:
    log = server.log()
    assert "Traceback" not in log, log
    assert "[ERROR]" not in log, log


def test_database_outage_answers_503_and_recovers_without_restart(
    postgres, settings, start_server
):
    database_url = postgres.create_database("outage")
    ours = {**settings, "DATABASE_URL": database_url}
    result = run_flask(ours, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    email = "outage@example.com"
    result = run_flask(ours, "users", "create", email, "--password", PASSWORD)
    assert result.returncode == 0, result.stderr

    server = start_server(DATABASE_URL=database_url)
    login_url = f"{server.url}/auth/login"
    credentials = {"email": email, "password": PASSWORD}
    token = bearer_token(server, email)
    browser = log_in(server, email)
    with open_socket(server, "/ws/echo", token=token) as ws:
        assert echoes(ws, "before")

        postgres.stop()

        # Fresh browsers: the forms themselves need no database.
        assert_unavailable_page(submit_form(requests.Session(), login_url, credentials))
        registration = {**credentials, "email": "new@example.com", "confirm": PASSWORD}
        assert_unavailable_page(
            submit_form(requests.Session(), f"{server.url}/auth/register", registration)
        )
        assert_unavailable_json(
            requests.post(
                f"{server.url}/auth/token", auth=(email, PASSWORD), timeout=30
            )
        )
        with pytest.raises(InvalidStatus) as refusal:
            open_socket(server, "/ws/echo", token=token)
        handshake = refusal.value.response
        assert handshake.status_code == 503
        assert handshake.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        assert json.loads(handshake.body) == {"error": MESSAGE}
        # The logged-in browser's session names a user only the database knows.
        assert_unavailable_page(browser.get(f"{server.url}/", allow_redirects=False))
        assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 503
        # The socket let in before the outage holds no database connection.
        assert echoes(ws, "during")
        assert len(REFUSAL_LOGGED.findall(server.log())) == 5, server.log()
        assert_clean_log(server)

        postgres.start()

        log_in(server, email)
        fresh_token = bearer_token(server, email)
        with open_socket(server, "/ws/echo", token=fresh_token) as fresh:
            assert echoes(fresh, "after")
        assert echoes(ws, "still open")
        assert browser.get(f"{server.url}/", allow_redirects=False).status_code == 200
    assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 200
    assert_clean_log(server)
