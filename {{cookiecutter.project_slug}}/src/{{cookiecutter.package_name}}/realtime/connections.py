"""The sockets this worker holds: how each one reads, writes and ends, a count
against the worker's capacity, a close when their user's credentials are
revoked, and a clean close when the worker stops."""

import _thread
import threading
import time
from contextlib import suppress
from functools import wraps
from logging import Logger

{% if cookiecutter.worker_class == "gevent" -%}
import gevent
{% endif -%}
from flask import current_app, g, request
from flask_login import current_user
from simple_websocket import ConnectionClosed
from wsproto.events import Ping
from wsproto.utilities import LocalProtocolError

from .. import metrics
from ..logs import ENVIRON_KEYS
from .outbox import Outbox

# https://www.rfc-editor.org/rfc/rfc6455#section-7.4.1
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
# Not sent: the connection ended without a closing handshake.
ABNORMAL_CLOSURE = 1006
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
SHUTTING_DOWN = "server shutting down"
# Handshakes one worker takes on at once; the next is refused with 503 at once.
# A handshake costs a few milliseconds of CPU, and a gevent worker shares its
# CPU among all those under way: after a deploy, when thousands of clients
# come back at the same moment, none of them would finish before the clients
# time out, and each retry would start the work again. A hundred under way
# finish within about half a second of one another; the refused come back
# after their backoff. (Under gthread each handshake also holds one of the
# worker's threads, which bound them too.)
HANDSHAKES_AT_ONCE = 100
CREDENTIALS_REVOKED = "credentials revoked"

# Seconds a revocation is remembered for the sockets still in their handshake:
# one whose user was loaded just before the change is closed as it opens.
REMEMBER_REVOCATION = 60.0

# What is left of a socket's WSGI environ while its handler runs (see
# `keep_what_the_socket_reads`): the request line, the peer and Host (code
# that builds a URL, and Werkzeug's development server at the end, read them
# again), the WSGI entries Flask and its logger read (`wsgi.errors`), the
# debugger's key when it runs, and the keys the logs use (../logs.py).
ENVIRON_KEPT = frozenset(
    {
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "REMOTE_ADDR",
        "HTTP_HOST",
        "wsgi.version",
        "wsgi.url_scheme",
        "wsgi.errors",
        "wsgi.multithread",
        "wsgi.multiprocess",
        "wsgi.run_once",
        "werkzeug.debug.preserve_context",
        *ENVIRON_KEYS.values(),
    }
)

# Seconds a closing socket waits for its client to take what is queued and
# answer the close; then the connection is cut. The same as the close timeout
# of the `websockets` client library.
CLOSE_TIMEOUT = 10

# The worker's `Pinger` goes round its sockets in this many turns per
# WS_PING_INTERVAL, so that thousands are not pinged in one go.
PING_TURNS = 10
# Sockets pinged before the pinger lets the worker's other work run.
PINGS_AT_ONCE = 100
# The reason simple-websocket gives when it closes a socket for this.
PING_TIMEOUT = "Ping/Pong timeout"
# Seconds between two additions of the sockets' message counts to /metrics.
COUNT_MESSAGES_EVERY = 1.0


def websocket_reader(target) -> threading.Thread:
    """The reader thread of every socket: `thread_class` for simple-websocket.

    simple-websocket calls this with its read loop once the handshake is done,
    before it reads anything from the client. Two things happen here:

    - the socket is wrapped in an `Outbox`, so that no write ever waits for
      the client (see outbox.py);
    - when the read loop ends, for whatever reason, a `receive()` that waits
      is woken once more. simple-websocket 1.1.0 wakes it *before* it marks
      the socket closed when it refuses a message (1009, too big) or a
      malformed frame (1002, 1007); the handler then waits forever and never
      gives back its slot or its thread.
    """
    ws = target.__self__
    outbox = Outbox(ws.sock)
    ws.sock = outbox
    if current_app.extensions.get("pinger") is not None:
        # Read by the loop when it starts: the worker's `Pinger` pings this
        # socket, and the loop waits in a plain `recv`.
        ws.ping_interval = None

    def read_then_wake() -> None:
        try:
            target()
        finally:
            ws.connected = False
            ws.event.set()
            outbox.close()

    return ReaderThread(read_then_wake)


class ReaderThread:
    """What simple-websocket gets in place of a `threading.Thread`: its `name`
    and `start`, which is all it uses.

    A `Thread` is kept for every socket with an Event, a Condition, its locks
    and a place in `threading`'s tables: 2 to 3 KB (measured in the template's
    benchmarks). `_thread` starts the same OS thread without them (a greenlet
    under gevent, which patches `_thread`). Nothing waits for a reader: it ends
    with its socket, as the daemon thread did. Nothing on the reader's path
    logs or asks `threading.current_thread()`, which would give it a
    `_DummyThread` that is never freed.
    """

    __slots__ = ("_run", "name")

    def __init__(self, run) -> None:
        self._run = run
        self.name = "websocket-reader"

    def start(self) -> None:
{%- if cookiecutter.worker_class == "gevent" %}
        if _thread.start_new_thread.__module__ == "gevent.thread":
            # gunicorn's gevent worker patched `_thread`, which would spawn a
            # `gevent.Greenlet`: its links, result and exception slots and one
            # more call under the loop cost 0.7 KB per socket (measured in the
            # template's benchmarks). A raw greenlet runs the loop alone; the
            # hub prints what it raises, as it would a Greenlet's.
            gevent.spawn_raw(self._run)
            return
{%- endif %}
        _thread.start_new_thread(self._run, ())


class WorkerLoop:
    """A task the worker runs on its sockets for as long as it lives, every
    `every` seconds, in a {% if cookiecutter.worker_class == "gevent" %}greenlet{% else %}thread{% endif %} of its own, started by its first socket:
    never before gunicorn forks, as a thread does not survive the fork."""

    name = "worker-loop"

    def __init__(
        self, connections: "OpenConnections", every: float, logger: Logger
    ) -> None:
        self.every = every
        self._connections = connections
        self._logger = logger
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._run, name=self.name, daemon=True).start()
                self._started = True

    def _run(self) -> None:
        raise NotImplementedError


class Pinger(WorkerLoop):
    """Pings every open socket of the worker once per `every` seconds, from one
{%- if cookiecutter.worker_class == "gevent" %}
    greenlet, and closes with 1008 a socket whose client has not answered the
{%- else %}
    thread, and closes with 1008 a socket whose client has not answered the
{%- endif %}
    last ping when the next is due: simple-websocket's own check, which it
    would make from each socket's reader.

    A reader that pings waits for its client in a poll with a timeout before
    every read: a second blocking call per message received (about 30 µs of
    worker CPU under gthread with 100 sockets echoing, 50 µs under gevent,
    where its parked stack also costs 1.5 KB more per socket; measured in the
    template's benchmarks).
    Here the reader waits in a plain `recv`.
    """

    name = "websocket-pinger"

    def _run(self) -> None:
        turn = 0
        while True:
            time.sleep(self.every / PING_TURNS)
            turn = (turn + 1) % PING_TURNS
            for number, connection in enumerate(
                self._connections.in_turn(turn, PING_TURNS), start=1
            ):
                try:
                    connection.ping()
                except Exception:  # one socket's fault must not stop the pings
                    self._logger.exception("pinging a WebSocket failed")
                if number % PINGS_AT_ONCE == 0:
                    time.sleep(0)  # the worker's other {% if cookiecutter.worker_class == "gevent" %}greenlets{% else %}threads{% endif %} run


class MessageCounts(WorkerLoop):
    """Adds the data messages the worker's sockets counted to
    `websocket_messages_total` every `every` seconds, and a socket's last ones
    as it closes: /metrics is at most `every` seconds behind an open socket's
    messages.

    Each socket counts its own in plain integers. prometheus-client's
    multiprocess counter takes one lock for the whole process, asks for the
    process id and writes a shared file on every increment: counted there,
    an echo message cost 6 to 14 µs more of worker CPU, under either worker
    class (measured in the template's benchmarks).
    """

    name = "websocket-message-counts"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Taking a socket's counts and adding them are one step, so that a
        # socket closing while the loop goes round is counted once.
        self._lock = threading.Lock()

    def add_last(self, connection: "Connection") -> None:
        """The socket is closed: add what it counted since the last time.
        Never raises: the rest of the socket's end must run."""
        try:
            with self._lock:
                counts = connection.take_message_counts()
                add_message_counts({connection.route: counts})
        except Exception:
            self._logger.exception("counting WebSocket messages failed")

    def add_all(self) -> None:
        totals: dict[str, tuple[int, int]] = {}
        with self._lock:
            for connection in self._connections.all():
                came, went = connection.take_message_counts()
                if came or went:
                    before_in, before_out = totals.get(connection.route, (0, 0))
                    totals[connection.route] = (before_in + came, before_out + went)
            add_message_counts(totals)

    def _run(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                self.add_all()
            except Exception:  # logged; the next round goes on
                self._logger.exception("counting WebSocket messages failed")


def add_message_counts(totals: dict[str, tuple[int, int]]) -> None:
    """{route: (messages in, messages out)} added to the metrics."""
    for route, (came, went) in totals.items():
        if came:
            metrics.WEBSOCKET_MESSAGES.labels(route, "in").inc(came)
        if went:
            metrics.WEBSOCKET_MESSAGES.labels(route, "out").inc(went)


class Connection:
    """A WebSocket as handlers and the hub use it.

    Sends take turns (the handler's own, the hub's deliveries from other
    threads, the close at shutdown), so frames never interleave; none of them
    waits for the client. A client that falls more than `send_queue_limit`
    bytes behind is closed with 1008.

    One is held for every open socket, so it keeps only what it uses, in slots
    (an instance dict costs more than all of them together).
    """

    __slots__ = (
        "user",
        "route",
        "request_id",
        "user_id",
        "credential_version",
        "_ws",
        "_outbox",
        "_lock",
        "_send_queue_limit",
        "_logger",
        "_came",
        "_went",
        "_came_taken",
        "_went_taken",
    )

    def __init__(
        self,
        ws,
        user: str,
        send_queue_limit: int,
        logger: Logger,
        *,
        user_id: int,
        credential_version: int,
        route: str,
        request_id: str | None = None,
    ) -> None:
        self.user = user
        self.route = route
        self.request_id = request_id
        # Whose socket it is and under which credential version it was
        # opened: a revocation closes the user's sockets opened before it.
        self.user_id = user_id
        self.credential_version = credential_version
        self._ws = ws
        self._outbox: Outbox = ws.sock
        self._lock = threading.Lock()
        self._send_queue_limit = send_queue_limit
        self._logger = logger
        # Data messages received and sent, and how many of each the worker's
        # `MessageCounts` has taken to the metrics.
        self._came = self._went = 0
        self._came_taken = self._went_taken = 0

    @property
    def log_fields(self) -> dict:
        """For its lines written from other threads (a chat delivery), which
        are not in this socket's request (../logs.py). Made when a line needs
        it rather than kept for every socket."""
        return {
            "request_id": self.request_id,
            "user": self.user_id,
            "route": self.route,
        }

    def receive(self) -> str | bytes:
        """The next message; raises ConnectionClosed once the socket closes."""
        message = self._ws.receive()
        # Only the handler receives: no other thread writes this count.
        self._came += 1
        return message

    def send(self, data: str | bytes) -> None:
        with self._lock:
            try:
                self._ws.send(data)
            except OSError:
                self._outbox.abort()
                raise ConnectionClosed(ABNORMAL_CLOSURE, "connection lost") from None
            self._went += 1
            if self._outbox.backlog > self._send_queue_limit:
                self._close_too_slow()
                raise ConnectionClosed(POLICY_VIOLATION, "too slow")

    def take_message_counts(self) -> tuple[int, int]:
        """The data messages received and sent since the last call (the
        worker's `MessageCounts` makes every call, under its lock)."""
        came, went = self._came, self._went
        counts = came - self._came_taken, went - self._went_taken
        self._came_taken, self._went_taken = came, went
        return counts

    def deliver(self, data: str | bytes) -> bool:
        """`send` for the hub: a socket that is gone is not the sender's
        problem. True when the message was written (or queued) for the client."""
        try:
            self.send(data)
        except ConnectionClosed:
            return False
        return True

    def close(self, code: int, reason: str) -> None:
        # LocalProtocolError: the client's own close was answered a moment
        # ago, by the reader, which has not yet marked the socket closed.
        # Raised here, it would end the shutdown's loop over every socket.
        with self._lock, suppress(ConnectionClosed, OSError, LocalProtocolError):
            self._ws.close(reason=code, message=reason)
        # receive() waits for the client otherwise; the handler can end now.
        self._ws.event.set()

    def going_away(self, reason: str) -> None:
        """Close with 1001, and end the connection's sending side once the
        frame is out (`Outbox.end_sending`): the client, or a proxy in front,
        gets the frame and then the end of the stream at once, and closes too,
        without waiting for this stopping worker to read its answer."""
        self.close(GOING_AWAY, reason)
        self._outbox.end_sending()

    def ping(self) -> None:
        """The worker's `Pinger`: ping the client, or, when the last ping got no
        answer, close with 1008 and cut the connection: a client that does not
        answer pings will not answer the close either."""
        ws = self._ws
        if not ws.connected:
            return
        if not ws.pong_received:
            self.close(POLICY_VIOLATION, PING_TIMEOUT)
            self._outbox.abort()
            return
        ws.pong_received = False
        with self._lock, suppress(OSError, LocalProtocolError):
            self._outbox.send(ws.ws.send(Ping()))

    def finish(self) -> int:
        """The handler is done: close the socket if it is open, give the client
        CLOSE_TIMEOUT seconds to read what is queued and answer, then cut it.

        Everything is over when this returns, so gunicorn has nothing left to
        wait for and the slot can be given back. Returns the close code: that
        of the closing handshake, whichever side began it, or 1006 without one.
        """
        self.close(NORMAL_CLOSURE, "")
        if not self._outbox.closed.wait(CLOSE_TIMEOUT):
            self._outbox.abort()
            self._outbox.closed.wait(CLOSE_TIMEOUT)
        return self._outbox.close_code or ABNORMAL_CLOSURE

    def _close_too_slow(self) -> None:
        behind = self._outbox.backlog
        self._outbox.discard_queue()
        self._logger.warning(
            "closing the WebSocket of %s with 1008: %d bytes behind, more than "
            "WS_SEND_QUEUE_LIMIT (%d)",
            self.user,
            behind,
            self._send_queue_limit,
            extra=self.log_fields,
        )
        with suppress(ConnectionClosed, OSError):
            self._ws.close(reason=POLICY_VIOLATION, message="too slow to read")
        self._ws.event.set()


class SocketUser:
    """`current_user` in a WebSocket handler: what a socket needs of its user
    once the handshake is over (the id and credential version for revocation,
    the email for the logs), without the SQLAlchemy instance, its state and
    the row's other columns, which every open socket would otherwise keep.
    A handler that needs more loads the user (`db.session.get`)."""

    __slots__ = ("id", "email", "credential_version")
    # Flask-Login's UserMixin: only an authenticated user gets this far.
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, id: int, email: str, credential_version: int) -> None:
        self.id = id
        self.email = email
        self.credential_version = credential_version

    def get_id(self) -> str:
        # As User.get_id (../auth/models.py).
        return f"{self.id}:{self.credential_version}"


class OpenConnections:
    """Counts the sockets of this worker and its handshakes under way, closes
    the sockets of a user whose credentials are revoked, and closes them all
    on the way out."""

    def __init__(
        self, capacity: int, handshakes_at_once: int = HANDSHAKES_AT_ONCE
    ) -> None:
        self.capacity = capacity
        self.handshakes_at_once = handshakes_at_once
        self._lock = threading.Lock()
        self._handshaking = 0
        self._reserved = 0
        self._open: set[Connection] = set()
        self._stopping = False
        # user id -> (the version revoked up to, monotonic time of it)
        self._revoked: dict[int, tuple[int, float]] = {}

    def begin_handshake(self) -> bool:
        """Count a handshake under way; False when `handshakes_at_once` are."""
        with self._lock:
            if self._handshaking >= self.handshakes_at_once:
                return False
            self._handshaking += 1
            return True

    def end_handshake(self) -> None:
        """The handshake is over: its socket is open, or it was refused."""
        with self._lock:
            self._handshaking -= 1

    def reserve(self) -> bool:
        """Take a slot before the handshake; False when none is left."""
        with self._lock:
            if self._stopping or self._reserved >= self.capacity:
                return False
            self._reserved += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._reserved -= 1

    @property
    def stopping(self) -> bool:
        """True once `close_all` has run: the worker is on its way out."""
        return self._stopping

    def add(self, connection: Connection) -> None:
        with self._lock:
            self._open.add(connection)
            stopping = self._stopping
            revoked, _ = self._revoked.get(connection.user_id, (0, 0.0))
        if stopping:  # admitted just before the worker was told to stop
            connection.close(GOING_AWAY, SHUTTING_DOWN)
        elif connection.credential_version < revoked:
            # Its user was loaded before the revocation reached this worker.
            connection.close(POLICY_VIOLATION, CREDENTIALS_REVOKED)

    def discard(self, connection: Connection) -> None:
        with self._lock:
            self._open.discard(connection)

    def revoke(self, user_id: int, version: int) -> int:
        """Close with 1008 the user's sockets opened under a credential version
        below `version`; returns how many."""
        now = time.monotonic()
        with self._lock:
            self._revoked = {
                user: revoked
                for user, revoked in self._revoked.items()
                if revoked[1] > now - REMEMBER_REVOCATION
            }
            known, _ = self._revoked.get(user_id, (0, 0.0))
            self._revoked[user_id] = (max(known, version), now)
            revoked = [
                connection
                for connection in self._open
                if connection.user_id == user_id
                and connection.credential_version < version
            ]
        for connection in revoked:
            connection.close(POLICY_VIOLATION, CREDENTIALS_REVOKED)
        return len(revoked)

    def all(self) -> list[Connection]:
        with self._lock:
            return list(self._open)

    def in_turn(self, turn: int, turns: int) -> list[Connection]:
        """The sockets whose turn `turn` is, of `turns`: each has one."""
        with self._lock:
            return [c for c in self._open if hash(c) % turns == turn]

    def oldest_credential_versions(self) -> dict[int, int]:
        """{user id: the oldest credential version among their sockets here}"""
        with self._lock:
            connections = list(self._open)
        oldest: dict[int, int] = {}
        for connection in connections:
            version = oldest.get(connection.user_id, connection.credential_version)
            oldest[connection.user_id] = min(version, connection.credential_version)
        return oldest

    def close_all(self, reason: str = SHUTTING_DOWN) -> int:
        """Close every socket with 1001 and admit no more; returns how many.

        Each socket's TCP connection is ended as soon as its close frame is
        out (`Connection.going_away`), rather than after its client's answer:
        a client (a browser, `websockets`) reconnects once the connection is
        closed, not when the close frame arrives, and thousands of answers
        would each wait their turn in this stopping worker."""
        with self._lock:
            self._stopping = True
            connections = list(self._open)
        for connection in connections:
            connection.going_away(reason)
        return len(connections)


def open_connections() -> OpenConnections:
    return current_app.extensions["open_connections"]


def keep_what_the_socket_reads(environ: dict) -> None:
    """Drop from the environ what nothing reads once the socket is open.

    The handler runs inside its request, so the request lives as long as the
    socket, environ included: every header (the cookie or token among them),
    gunicorn's and ProxyFix's entries. All of it was read during the
    handshake. gunicorn writes no access line for a WebSocket (Flask-Sock
    ends the response without one), and the socket's lines take their request
    id, user and route from `g` and the request (../logs.py). Werkzeug copied
    `request.path`, `args`, `remote_addr` and the like at the request's start;
    of `request.headers`, a handler finds Host only (docs/websockets.md).

    Cleared and refilled rather than emptied key by key: a dict does not
    shrink when keys are deleted.
    """
    kept = {key: environ[key] for key in ENVIRON_KEPT if key in environ}
    environ.clear()
    environ.update(kept)


def websocket_handler(handler):
    """Run `handler(connection)` for an accepted socket.

    The connection is counted for the shutdown close and for revocations
    (revocations.py), and in the metrics (../metrics.py). A handler that fails
    closes its socket with 1011 and logs the traceback, instead of writing an
    HTTP 500 onto a connection that already speaks WebSocket. Whatever ends
    the socket, it is closed and done with when this returns.
    """

    @wraps(handler)
    def run(ws, *args, **kwargs):
        # Each use of `current_app`, `request` or `g` looks its object up
        # again, and this runs on every handshake: once each here.
        app = current_app._get_current_object()
        req = request._get_current_object()
        request_globals = g._get_current_object()
        # The route as declared (/ws/echo), not the path: one series per route.
        route = req.url_rule.rule
        user = current_user._get_current_object()
        if not isinstance(user, SocketUser):
            user = SocketUser(user.id, user.email, user.credential_version)
            # Where Flask-Login keeps the request's user: the User instance goes.
            request_globals._login_user = user
        keep_what_the_socket_reads(req.environ)
        connection = Connection(
            ws,
            user=user.email,
            send_queue_limit=app.config["WS_SEND_QUEUE_LIMIT"],
            logger=app.logger,
            user_id=user.id,
            credential_version=user.credential_version,
            route=route,
            request_id=request_globals.get("request_id"),
        )
        registry = app.extensions["open_connections"]
        registry.add(connection)
        if request_globals.pop("websocket_handshake", False):
            registry.end_handshake()
        app.extensions["credential_check"].start()
        if pinger := app.extensions.get("pinger"):
            pinger.start()
        message_counts = app.extensions["message_counts"]
        message_counts.start()
        open_now = metrics.WEBSOCKET_CONNECTIONS.labels(route)
        open_now.inc()
        opened_at = time.monotonic()
        try:
            if args or kwargs:
                handler(connection, *args, **kwargs)
            else:
                # A plain call runs without a C-level call of its own (Python
                # 3.11+), so the stack every idle socket keeps is 0.4 KB
                # shorter under gevent (measured in the template's benchmarks).
                handler(connection)
        except ConnectionClosed:
            pass
        except Exception:
            app.logger.exception("WebSocket handler for %s failed", req.path)
            connection.close(INTERNAL_ERROR, "internal error")
        finally:
            registry.discard(connection)
            code = connection.finish()
            message_counts.add_last(connection)
            # Flask's work on the response goes (`App.process_response`).
            request_globals.websocket_closed = True
            open_now.dec()
            metrics.WEBSOCKET_CLOSES.labels(str(code)).inc()
            duration = time.monotonic() - opened_at
            app.logger.info(
                "WebSocket %s of %s closed with %d after %.1f s",
                req.path,
                connection.user,
                code,
                duration,
                extra={"close_code": code, "duration": round(duration, 3)},
            )

    return run
