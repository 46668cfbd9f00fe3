"""The floor: the baseline (baseline_app.py) plus the least that an
authenticated WebSocket handshake with a per-user limit must do, and nothing
else of the service's.

The generated service checks, before every handshake, who the client is and
whether they may open one more socket. Whatever its design, that takes at
least:

- `token`: the bearer token's signature and age (itsdangerous, as the service);
- `user`: the holder's credential version, read from the database, so that a
  logout or a password change refuses the next handshake at once, on every
  worker (one SELECT by primary key, SQLite, on a pooled connection);
- `count`: the holder's sockets across workers and instances, in Redis: one
  round trip to count the socket in (refused past the limit), one to count
  it out when it closes. Each is a command sent on one of redis-py's
  connections and its answer read, without the client's pool, retry and
  callbacks, as the service runs its leases (realtime/redis_user_sockets.py,
  `Scripts`).

FLOOR_STEPS (comma-separated, default all three) picks which of them run, so
that each one's share can be measured. No Origin check, logging, metrics,
capacity guard, session, Flask-Login or outbox: the service's other work.
benchmarks/profile_handshake.py `--floor` runs it beside the baseline and the
service and reports it in the same table.

Settings: FLOOR_SECRET (signs the tokens; profile_handshake.py makes them),
FLOOR_DATABASE (an SQLite file, made here with one user), REDIS_URL. Importing
it touches nothing: the database is made with the first connection.
"""

import os
import sqlite3
import threading

import redis
from flask import Flask, abort, g, request
from flask_sock import Sock
from itsdangerous import BadSignature, URLSafeTimedSerializer

SALT = "floor-token"
USER_ID = 1
LIMIT = 1_000_000  # high enough that the benchmark never meets it
STEPS = set(os.environ.get("FLOOR_STEPS", "token,user,count").split(","))
DATABASE = os.environ.get("FLOOR_DATABASE", "floor.db")

app = Flask(__name__)
sock = Sock(app)
tokens = URLSafeTimedSerializer(os.environ.get("FLOOR_SECRET", "floor"), salt=SALT)
redis_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1"))


class Counts:
    """INCR and DECR, one round trip each, on connections kept idle in a list.
    An idle connection that Redis closed is made again before it is used, as
    the service's (a restarted Redis would otherwise fail a handshake); one on
    which anything failed is closed, not kept."""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._kwargs = pool.connection_kwargs
        self._class = pool.connection_class
        self._idle: list = []

    def call(self, *command):
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._class(**self._kwargs)
        else:
            try:
                usable = not connection.can_read()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                usable = False
            if not usable:
                connection.disconnect()
        try:
            connection.send_command(*command)
            answer = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        self._idle.append(connection)
        return answer


counts = Counts(redis_client)


def make_token(secret: str, user_id: int = USER_ID, version: int = 0) -> str:
    """A token this app accepts (for the benchmark's client)."""
    return URLSafeTimedSerializer(secret, salt=SALT).dumps([user_id, version])


class Pool:
    """SQLite connections shared by the worker's threads (or greenlets)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def version_of(self, user_id: int) -> int | None:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:  # the pool grows to what is used at once
            create_database(self._path)
            connection = sqlite3.connect(self._path, check_same_thread=False)
        try:
            row = connection.execute(
                "SELECT credential_version FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        finally:
            with self._lock:
                self._idle.append(connection)
        return row[0] if row else None


def create_database(path: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS users"
            " (id INTEGER PRIMARY KEY, email TEXT, credential_version INTEGER)"
        )
        connection.execute(
            "INSERT OR IGNORE INTO users VALUES (?, 'floor@example.com', 0)",
            (USER_ID,),
        )


pool = Pool(DATABASE)


@app.before_request
def admit():
    if request.path != "/ws/echo":
        return
    user_id, version = USER_ID, 0
    if "token" in STEPS:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            user_id, version = tokens.loads(token, max_age=3600)
        except BadSignature:
            abort(401)
    if "user" in STEPS and pool.version_of(user_id) != version:
        abort(401)
    if "count" in STEPS:
        key = f"floor:sockets:{user_id}"
        if counts.call("INCR", key) > LIMIT:
            counts.call("DECR", key)
            abort(429)
        g.counted = key


@app.teardown_request
def count_out(_exc):
    if key := g.pop("counted", None):
        counts.call("DECR", key)


@app.get("/count")
def count():
    """The sockets counted in and not yet out (0 once every one has closed)."""
    return str(int(redis_client.get(f"floor:sockets:{USER_ID}") or 0))


# Under /ws/, as the service's: the generated nginx proxies it as a WebSocket.
@sock.route("/ws/echo")
def echo(ws):
    while True:
        data = ws.receive()
        ws.send(data)
