"""Two kinds of test, as Flask's tutorial (flaskr) and real deployments have.

In process: `app`, `client` and `runner` (app.test_client(),
app.test_cli_runner()), each test with a database of its own, for what needs
no socket: forms, tokens, probes, security headers, error pages, commands.

Real processes, real protocols: gunicorn from gunicorn.conf.py on a free port
(`server`, `start_server`), nginx, Redis, and real HTTP and WebSocket clients,
for sockets, signals, capacity, limits across workers, the proxy and TLS.

Tests that need something a machine may lack skip with the reason; with
REQUIRE_ALL=1 (set by CI) they fail instead.
"""

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
{%- if cookiecutter.broadcast == "redis" %}
import redis
{%- endif %}
import requests
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from websockets.sync.client import connect
from werkzeug.security import generate_password_hash

from {{ cookiecutter.package_name }} import create_app
from {{ cookiecutter.package_name }}.auth.models import User
from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.extensions import db

# The test modules import free_port and wait_until from here too (this file
# uses free_port only for Redis's port).
from .processes import free_port as free_port
from .processes import reserved_port, stop_process, wait_until_started
from .processes import wait_until as wait_until

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "{{ cookiecutter.package_name }}"
BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery"  # noqa: S105 (the test accounts' password)


def require(available: bool, reason: str) -> None:
    """Skip when something the test needs is missing; fail under REQUIRE_ALL=1."""
    if available:
        return
    if os.environ.get("REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (REQUIRE_ALL=1 turns this skip into a failure)")
    pytest.skip(reason)


def require_command(name: str, purpose: str) -> str:
    """The path of a program the test needs, or a skip (a failure under REQUIRE_ALL)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed; it is needed {purpose}")
    return path


# Whether the test's body failed, for fixtures that keep evidence of a failure
# (the browser tests' screenshots).
CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


def clean_environ(**settings: str) -> dict:
    """The process environment without any of the app's settings, plus these.

    The tests decide every setting; nothing leaks in from the shell or `.env`.
    """
    environ = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
    # Text, whatever APP_ENV says: the tests read the lines. test_logs.py
    # checks json, and the default.
    environ["LOG_FORMAT"] = "text"
    environ.update(settings)
    return environ


{%- if cookiecutter.database == "postgresql" %}


@contextlib.contextmanager
def new_database():
    """A fresh PostgreSQL database on the server named by TEST_DATABASE_ADMIN_URL;
    dropped at the end."""
    import psycopg

    admin_url = os.environ.get(
        "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        require(False, f"PostgreSQL is not reachable at {admin_url}: {error}")
    name = f"test_{PACKAGE}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = admin_url.rsplit("/", 1)[0]
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url():
    """The database of the test servers."""
    with new_database() as url:
        yield url


@pytest.fixture
def app_database_url():
    """The database of one test's app."""
    with new_database() as url:
        yield url
{%- else %}


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    """The database of the test servers."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture
def app_database_url(tmp_path):
    """The database of one test's app."""
    return f"sqlite:///{tmp_path / 'app.db'}"
{%- endif %}


# The suite logs in far more often than a person; tests/test_rate_limits.py
# checks the limits on servers of its own.
UNLIMITED_LOGINS = {
    "AUTH_LIMIT_PER_ADDRESS": "100000/minute",
    "AUTH_LIMIT_PER_ACCOUNT": "100000/minute",
}


{%- if cookiecutter.broadcast == "redis" %}


class RedisServer:
    """A redis-server of the test's own on a free port, which it may stop."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> "RedisServer":
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_until_started(self.process, self.answers, timeout=10)
        return self

    def answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process:
            stop_process(self.process, timeout=10)


@pytest.fixture(scope="session")
def start_redis():
    binary = require_command("redis-server", "to test broadcast through Redis")
    started = []

    def start(port: int | None = None) -> RedisServer:
        server = RedisServer(binary, port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def settings(database_url, start_redis) -> dict:
    """The settings of the default test server."""
    return {
        "APP_ENV": "testing",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url,
        "REDIS_URL": start_redis().url,
        **UNLIMITED_LOGINS,
    }
{%- else %}


@pytest.fixture(scope="session")
def settings(database_url) -> dict:
    """The settings of the default test server."""
    return {
        "APP_ENV": "testing",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATABASE_URL": database_url,
        **UNLIMITED_LOGINS,
    }
{%- endif %}


def run_flask(settings: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a `flask --app <package>` command, as a user would."""
    return subprocess.run(
        [str(BIN / "flask"), "--app", PACKAGE, *args],
        cwd=kwargs.pop("cwd", PROJECT_ROOT),
        env=clean_environ(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


@pytest.fixture(scope="session")
def migrated(settings) -> dict:
    result = run_flask(settings, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    return settings


# In process, as in Flask's tutorial: the app, a client and the command runner.


def make_app(settings: dict) -> Flask:
    """The app with these settings and no others: the app's variables of the
    process environment are hidden while it reads its settings."""
    with pytest.MonkeyPatch.context() as environ:
        for name in Settings.model_fields:
            environ.delenv(name, raising=False)
        return create_app(settings)


{%- if cookiecutter.broadcast == "redis" %}


@pytest.fixture(scope="session")
def app_redis_url(start_redis) -> str:
    """A Redis apart from the test servers': a revocation of an in-process
    app's user 1 must not reach the servers' user 1 through the chat stream."""
    return start_redis().url


@pytest.fixture
def app_settings(settings, app_database_url, app_redis_url) -> dict:
    """The test server's settings, on a database of the test's own."""
    return {**settings, "DATABASE_URL": app_database_url, "REDIS_URL": app_redis_url}
{%- else %}


@pytest.fixture
def app_settings(settings, app_database_url) -> dict:
    """The test server's settings, on a database of the test's own."""
    return {**settings, "DATABASE_URL": app_database_url}
{%- endif %}


@pytest.fixture
def app(app_settings) -> Iterator[Flask]:
    """The app in this process, with empty tables of its own."""
    app = make_app(app_settings)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app) -> FlaskClient:
    return client_of(app)


def client_of(app: Flask) -> FlaskClient:
    """A client that accepts any answer (`Accept: */*`), as browsers and
    requests do; without the header, the app answers a program's 401 where
    a person gets the login page."""
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT"] = "*/*"
    return client


@pytest.fixture
def runner(app) -> FlaskCliRunner:
    return app.test_cli_runner()


def create_user(runner: FlaskCliRunner, email: str) -> str:
    """Create a user with the real command; returns the email."""
    result = runner.invoke(args=["users", "create", email, "--password", PASSWORD])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"created user {email}\n"
    return email


@pytest.fixture(scope="session")
def password_hash() -> str:
    """PASSWORD's hash, made once: hashing is slow on purpose."""
    return generate_password_hash(PASSWORD)


@pytest.fixture
def user(app, password_hash) -> str:
    """The email of an account in the app's database, with PASSWORD."""
    email = "user@example.com"
    with app.app_context():
        db.session.add(User(email=email, password_hash=password_hash))
        db.session.commit()
    return email


class AuthActions:
    """What a browser and an API client do with the account pages, through
    the test client."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def submit(self, path: str, fields: dict, *, target: str | None = None):
        """Fill in the form at `path` as a browser does: its CSRF token comes
        from the page. Posts to `target` (default: `path`)."""
        form = self.client.get(path)
        data = {**fields, "csrf_token": csrf_token(form.text)}
        return self.client.post(target or path, data=data)

    def log_in(self, email: str, password: str = PASSWORD) -> None:
        response = self.submit("/auth/login", {"email": email, "password": password})
        assert response.status_code == 302, response.text

    def token(self, email: str, password: str = PASSWORD):
        """The response to a token request with HTTP Basic credentials."""
        return self.client.post("/auth/token", auth=(email, password))


@pytest.fixture
def auth(client) -> AuthActions:
    return AuthActions(client)


def workers(count: int, concurrency: int) -> dict:
    """Settings for `count` workers that each serve `concurrency` requests at
    once (threads or connections, by the worker class)."""
    return {
        "WEB_CONCURRENCY": str(count),
{%- if cookiecutter.worker_class == "gevent" %}
        "GUNICORN_WORKER_CONNECTIONS": str(concurrency),
{%- else %}
        "GUNICORN_THREADS": str(concurrency),
{%- endif %}
    }


# One worker of 4: 2 are kept for HTTP, so it admits 2 sockets.
SMALL_WORKER = workers(1, 4)
SMALL_WORKER_SOCKETS = 2


class Server:
    """gunicorn, started from gunicorn.conf.py in a subprocess on a free port
    (or on `port`, to stand in for a server that was stopped)."""

    def __init__(
        self,
        settings: dict,
        log_path: Path,
        app: str | None = None,
        port: int | None = None,
    ):
        # A free port is held until gunicorn answers: see reserved_port.
        with contextlib.nullcontext(port) if port else reserved_port() as self.port:
            self.url = f"http://127.0.0.1:{self.port}"
            self.ws_url = f"ws://127.0.0.1:{self.port}"
            self.log_path = log_path
            command = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"]
            command += ["--bind", f"127.0.0.1:{self.port}"]
            if app:
                command.append(app)
            self._log = log_path.open("w")
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=clean_environ(**settings),
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            wait_until_started(self.process, self._healthy, timeout=30, log=self.log)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:  # not listening, or still booting
            return False

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in children.split()]

    def workers_memory(self) -> int:
        """Resident memory of every worker together, in bytes."""
        total = 0
        for pid in self.worker_pids():
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
        return total * 1024

    def stop(self) -> None:
        stop_process(self.process, timeout=40)  # above graceful_timeout (30 s)
        self._log.close()


# Every gunicorn `start_server` started, in order.
STARTED_SERVERS: list[Server] = []


@pytest.fixture(scope="session")
def start_server(migrated, tmp_path_factory):
    """Start another gunicorn with settings of the test's own. One started by
    a test's body is told to stop when the body ends (see
    `pytest_runtest_call`); one started by a fixture lives until the end."""

    def start(
        app: str | None = None, port: int | None = None, **overrides: str
    ) -> Server:
        log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
        server = Server({**migrated, **overrides}, log_path, app=app, port=port)
        STARTED_SERVERS.append(server)
        return server

    yield start
    # Told all at once, they wind down side by side.
    for server in STARTED_SERVERS:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in STARTED_SERVERS:
        server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """SIGTERM the servers a test's body started, once it ends, without
    waiting for them: they wind down while the next test runs, instead of
    adding their workers' threads to every later test's machine and all
    stopping at once at the end (where `start_server` reaps them)."""
    first = len(STARTED_SERVERS)
    try:
        return (yield)
    finally:
        for server in STARTED_SERVERS[first:]:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)


{%- if cookiecutter.use_docker == "y" %}


UNLIMITED_NGINX_AUTH = {"NGINX_AUTH_RATE": "1000r/s", "NGINX_AUTH_BURST": "100000"}


@pytest.fixture(scope="session")
def start_nginx(tmp_path_factory):
    """Start Debian's nginx, with the generated config, in front of gunicorn
    servers (tests/nginx.py); stopped at the end."""
    from .nginx import Nginx, find_nginx

    require(
        find_nginx() is not None,
        "nginx is not installed (Debian: apt-get install nginx)",
    )
    started = []

    def start(*servers, **variables: str) -> Nginx:
        upstreams = [f"127.0.0.1:{server.port}" for server in servers]
        # As for the app's limits: test_nginx.py checks nginx's own on an
        # nginx of its own.
        variables = {**UNLIMITED_NGINX_AUTH, **variables}
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), upstreams, **variables)
        started.append(nginx)
        return nginx.start()

    yield start
    for nginx in started:
        nginx.stop()
{%- endif %}


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The default test server, shared by the tests that only talk to it."""
    return start_server()


@pytest.fixture(scope="session")
def server_runner(migrated) -> FlaskCliRunner:
    """The app's commands, in process, on the test servers' database."""
    return make_app(migrated).test_cli_runner()


@pytest.fixture(scope="session")
def make_user(server_runner):
    """Create a user of the test servers with the real command; returns the email."""

    def make(email: str | None = None) -> str:
        email = email or f"user-{secrets.token_hex(4)}@example.com"
        return create_user(server_runner, email)

    return make


@pytest.fixture(scope="session")
def alice(make_user) -> str:
    return make_user("alice@example.com")


@pytest.fixture(scope="session")
def bob(make_user) -> str:
    return make_user("bob@example.com")


def bearer_token(server: Server, email: str, password: str = PASSWORD) -> str:
    response = requests.post(
        f"{server.url}/auth/token", auth=(email, password), timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["token"]


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def submit_form(
    browser: requests.Session, url: str, fields: dict, *, target: str | None = None
) -> requests.Response:
    """Fill in the form at `url` as a browser does: its CSRF token comes from
    the page. Posts to `target` (default: `url`) and does not follow redirects."""
    form = browser.get(url)
    trust_secure_cookies_on_loopback(browser)
    response = browser.post(
        target or url,
        data={**fields, "csrf_token": csrf_token(form.text)},
        allow_redirects=False,
    )
    trust_secure_cookies_on_loopback(browser)
    return response


def log_in(server: Server, email: str, password: str = PASSWORD) -> requests.Session:
    """Log in through the form, as a browser does; the session holds the cookie."""
    browser = requests.Session()
    fields = {"email": email, "password": password}
    response = submit_form(browser, f"{server.url}/auth/login", fields)
    assert response.status_code == 302, response.text
    return browser


def trust_secure_cookies_on_loopback(browser: requests.Session) -> None:
    """Browsers count http://127.0.0.1 as a secure context and send it Secure
    cookies; requests does not, so the servers in production mode need this."""
    for cookie in browser.cookies:
        cookie.secure = False


def cookie_header(browser: requests.Session) -> str:
    return "; ".join(f"{name}={value}" for name, value in browser.cookies.items())


def open_socket(
    server: Server, path: str, *, token=None, browser=None, origin=None, **options
):
    """A WebSocket to `path`, authenticated by a bearer token or a browser's cookie;
    `options` go to websockets' `connect`.

    Raises websockets.exceptions.InvalidStatus when the handshake is refused.
    """
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if browser is not None:
        headers["Cookie"] = cookie_header(browser)
        origin = origin or server.url  # browsers always send Origin
    return connect(
        f"{server.ws_url}{path}",
        additional_headers=headers,
        origin=origin,
        **{"open_timeout": 10, "close_timeout": 5, "max_size": None, **options},
    )


def echoes(ws, text: str = "ping") -> bool:
    """Whether the echo socket `ws` sends `text` back."""
    ws.send(text)
    return ws.recv(timeout=10) == text


def join_chat(*sockets) -> None:
    """Wait until each chat socket is subscribed, then drop what they heard.

    The 101 reaches the client a moment before the handler subscribes to the
    hub, so a message sent at once could miss a client that just connected. A
    client hears its own message only once subscribed.
    """
    for number, ws in enumerate(sockets):
        marker = json.dumps({"text": f"client {number} joined"})
        ws.send(marker)
        while True:
            message = json.loads(ws.recv(timeout=5))
            if message.get("text") == f"client {number} joined":
                break
            if message.get("type") == "error":  # the hub is not ready yet
                time.sleep(0.1)
                ws.send(marker)
    for ws in sockets:
        while True:
            try:
                ws.recv(timeout=0.3)
            except TimeoutError:
                break


class RawWebSocket:
    """A WebSocket client spoken by hand over TCP, for what a client library
    will not do: stop reading, send malformed frames, vanish mid-stream.
    https://www.rfc-editor.org/rfc/rfc6455#section-5.2
    """

    TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA

    def __init__(
        self,
        server: Server,
        path: str,
        token: str,
        *,
        receive_buffer: int | None = None,
        headers: dict | None = None,
    ) -> None:
        self.sock = socket.socket()
        if receive_buffer:
            # Before connecting, so the window the server sees is small too.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{server.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Authorization: Bearer {token}",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._buffer = b""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(marker, 1)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send_frame(
        self, opcode: int, payload: bytes, *, rsv1: bool = False, masked: bool = True
    ) -> None:
        """One whole frame; clients must mask theirs (masked=False is a
        protocol error, on purpose)."""
        first = 0x80 | (0x40 if rsv1 else 0) | opcode
        mask_bit = 0x80 if masked else 0
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", first, mask_bit | size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", first, mask_bit | 126, size)
        else:
            header = struct.pack("!BBQ", first, mask_bit | 127, size)
        if masked:
            # A zero key leaves the payload as it is; servers do not check keys.
            header += bytes(4)
        self.sock.sendall(header + payload)

    def recv_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the server's next frame."""
        first, second = self._read_exactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read_exactly(8))
        return first & 0x0F, self._read_exactly(size)

    def recv_data_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the server's next frame other than a ping. The
        worker pings every socket in turn, a new one too, whenever its turn
        comes: a ping is answered with its pong, as any client does."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode != self.PING:
                return opcode, payload
            self.send_frame(self.PONG, payload)

    def messages_until_close(self) -> tuple[list[bytes], int]:
        """Every data frame the server still sends, then its close code; the
        close is answered, as a client should."""
        messages = []
        while True:
            opcode, payload = self.recv_frame()
            if opcode == self.CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                with contextlib.suppress(OSError):
                    self.send_frame(self.CLOSE, payload[:2])
                return messages, code
            if opcode in (self.TEXT, self.BINARY):
                messages.append(payload)

    def close(self) -> None:
        self.sock.close()
