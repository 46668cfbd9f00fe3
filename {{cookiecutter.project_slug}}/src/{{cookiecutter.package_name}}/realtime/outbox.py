"""What a socket has yet to send, written out without ever making a sender wait.

simple-websocket (1.1.0) writes each frame to the socket from the thread that
sends it. Once a client stops reading, the kernel's buffer for it fills up and
that write blocks: in the chat it is the thread delivering a message to every
client, so one client that stops reading freezes the chat of its whole worker.
Under gevent the same write can also send part of a frame and drop the rest.

An `Outbox` takes the socket's place inside simple-websocket (`ws.sock`).
Reads go to the socket as before. Every frame written goes out at once as far
as the kernel takes it: the handler's replies, the hub's deliveries, pings
(the worker's `Pinger`'s, or simple-websocket's own), pongs and
closes. The rest waits in this socket's queue, and a writer of its own (a
thread, a greenlet under gevent) sends it as the client reads. `backlog` says
how far the client is behind; `Connection` closes it with 1008 when that
passes WS_SEND_QUEUE_LIMIT.

Since every frame passes here, so does the close frame, whoever decided on it
(a handler, the shutdown, simple-websocket refusing a message too big, or the
answer to the client's own close): `close_code` keeps its code for the
metrics.
"""

import selectors
import socket
import threading
from collections import deque
from contextlib import suppress


class Outbox:
    __slots__ = (
        "_sock",
        "_lock",
        "_queue",
        "_current",
        "_writing",
        "_reader_done",
        "_aborted",
        "backlog",
        "closed",
        "close_code",
    )

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        # Made when a first frame has to wait: most sockets never fill the
        # kernel's buffer, and an empty deque holds a block of 64 slots.
        self._queue: deque[memoryview] | None = None
        # The frame the writer has begun: it must go out whole, whatever is
        # dropped from the queue meanwhile.
        self._current: memoryview | None = None
        self._writing = False
        self._reader_done = False
        self._aborted = False
        # Bytes accepted and not yet handed to the kernel.
        self.backlog = 0
        # Set once the socket is closed: written out, or given up on.
        self.closed = Flag()
        # The code of the first close frame sent, once one is.
        self.close_code: int | None = None

    # --- the socket interface simple-websocket uses -------------------------

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def send(self, frame: bytes) -> int:
        """Take whole frames; never waits for the client."""
        with self._lock:
            if self._aborted or self._reader_done:
                raise BrokenPipeError("the WebSocket is closed")
            # A data frame is written alone; control frames (a pong and a
            # close) may come together.
            if self.close_code is None and frame and frame[0] & 0x0F >= CLOSE:
                self.close_code = close_code(frame)
            if self._writing:
                if self._queue is None:
                    self._queue = deque()
                self._queue.append(memoryview(frame))
                self.backlog += len(frame)
                return len(frame)
            # Nothing is queued: write what the kernel takes now, and leave the
            # rest of the frame to a writer.
            sent = send_without_waiting(self._sock, frame)
            if sent == len(frame):
                return sent
            self._current = memoryview(frame)[sent:]
            self.backlog += len(self._current)
            self._writing = True
        writer = threading.Thread(
            target=self._write_queue, name="outbox-writer", daemon=True
        )
        try:
            writer.start()
        except RuntimeError:  # the process can start no more threads
            with self._lock:
                self._writing = False
            self.abort()
            raise BrokenPipeError("no thread to write to the WebSocket") from None
        return len(frame)

    def close(self) -> None:
        """simple-websocket is done reading; the connection ends once the
        queue is written out (or given up on)."""
        with self._lock:
            self._reader_done = True
            if self._writing:
                return
        self._end_connection()

    # --- for Connection -----------------------------------------------------

    def discard_queue(self) -> int:
        """Drop the frames not begun yet (a frame half sent is finished, so the
        stream stays whole for what follows); returns the bytes dropped."""
        with self._lock:
            if not self._queue:
                return 0
            dropped = sum(len(frame) for frame in self._queue)
            self._queue.clear()
            self.backlog -= dropped
            return dropped

    def end_sending(self) -> None:
        """Nothing more is to be written: end the sending side (a FIN after
        what the kernel holds). What the client sends can still be read. A
        frame still waiting for room (a client behind with its reading) is
        left to the writer, and the connection to the usual closing handshake."""
        with self._lock:
            if self._writing or self._aborted:
                return
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        """Give up on the client: drop what is queued and cut the connection.

        `shutdown` (not `close`) wakes the reader blocked in `recv` and the
        writer waiting for room, so both end and give their threads back.
        """
        with self._lock:
            self._aborted = True
            if self._queue:
                self._queue.clear()
            self.backlog = 0
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # --- the writer ---------------------------------------------------------

    def _write_queue(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._sock, selectors.EVENT_WRITE)
                while self._write_some(selector):
                    pass
        except (OSError, ValueError):
            # The client went away, or abort() cut the connection.
            self.abort()
            with self._lock:
                self._writing = False
                self._current = None
        with self._lock:
            close_now = self._reader_done and not self._writing
        if close_now:
            self._end_connection()

    def _write_some(self, selector: selectors.BaseSelector) -> bool:
        """Write part of the queue once the client has room; False when the
        queue is empty (and this writer is done)."""
        with self._lock:
            if self._current is None:
                if self._aborted or not self._queue:
                    self._writing = False
                    return False
                self._current = self._queue.popleft()
            frame = self._current
        selector.select()
        sent = send_without_waiting(self._sock, frame)
        with self._lock:
            if self._aborted:
                raise BrokenPipeError("aborted")
            self.backlog -= sent
            self._current = frame[sent:] if sent < len(frame) else None
        return True

    def _end_connection(self) -> None:
        # Ends the connection, both ways; the socket itself is the server's
        # (gunicorn's, Werkzeug's), which closes it once the request is over.
        # gunicorn's gthread worker counts its connections as it closes them:
        # a socket closed here made that close fail and the count drop twice,
        # below zero after a few sockets, and a stopping worker then left
        # without waiting for its requests in flight (its sockets' 1001s).
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self.closed.set()


class Flag:
    """`threading.Event` in one lock, released while the flag is set: the
    Outbox's `closed`, and under gthread the event on which every socket's
    handler waits for its reader (simple-websocket's `event_class`).

    One is kept for every socket, and an Event is a Condition, a lock and a
    deque besides (1.2 KB under gthread). Every message received passes
    through the reader's `set` and the handler's `wait` and `clear`, and
    an Event's `wait` makes a lock and a Condition's list entry each time:
    with this one, gthread's worker runs about 9 % fewer instructions per
    echo message (measured in the template's benchmarks). Under gevent, whose
    Event is compiled, this one costs more and is not used.

    `set` may come from several threads at once (the reader, the writer, a
    close), and a waiter takes the lock and gives it back at once: whoever
    finds it already released has nothing left to do. A `wait` can return
    True for a `set` that a `clear` raced with: its caller checks what it
    waits for again, as simple-websocket's `receive` does (the message list,
    `connected`) after every `clear`.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        # Not `suppress`, an object and two calls more: every message comes here.
        try:  # noqa: SIM105
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def clear(self) -> None:
        self._set = False
        self._lock.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        if self._set:
            return True
        if timeout is None:
            self._lock.acquire()
        elif not self._lock.acquire(True, max(timeout, 0)):
            return False
        try:  # noqa: SIM105 (as in `set`)
            self._lock.release()
        except RuntimeError:  # a `set` at the same moment
            pass
        return True


CLOSE = 0x8
# A close frame without a code: https://www.rfc-editor.org/rfc/rfc6455#section-7.1.5
NO_STATUS_RECEIVED = 1005


def close_code(data: bytes) -> int | None:
    """The code of the first close frame among the whole frames in `data`, as
    a server writes them (unmasked); None when there is none.
    https://www.rfc-editor.org/rfc/rfc6455#section-5.2"""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size = int.from_bytes(data[at : at + 2], "big")
            at += 2
        elif size == 127:
            size = int.from_bytes(data[at : at + 8], "big")
            at += 8
        if opcode == CLOSE:
            if size < 2:
                return NO_STATUS_RECEIVED
            return int.from_bytes(data[at : at + 2], "big")
        at += size
    return None


def send_without_waiting(sock: socket.socket, data: bytes | memoryview) -> int:
    """Write what the kernel takes now; 0 when the client's buffer is full."""
    try:
{%- if cookiecutter.worker_class == "gevent" %}
        # gevent's socket waits for room unless its timeout is 0.
        return sock.send(data, 0, timeout=0.0)
{%- else %}
        return sock.send(data, socket.MSG_DONTWAIT)
{%- endif %}
    except BlockingIOError:
        return 0
