"""Chat fan-out through a Redis Stream, across workers and app instances.

Publishing appends the message to one stream; every worker reads that stream
on from the last entry it has seen and hands each entry to the sockets it
holds, so a message reaches every chat client wherever it is connected. A
worker that loses Redis reads on from where it was once it is back, so it
misses nothing that was added meanwhile; with pub/sub, which delivers only to
whoever is subscribed at that instant, it would have.
https://redis.io/docs/latest/develop/data-types/streams/

When Redis goes away the service stays up: publishing raises HubUnavailable
(the handler tells the sender, nothing is claimed as sent), `check()` fails so
/readyz answers 503, and the reader reconnects with backoff and catches up.

A Redis that restarts empty (no persistence, as in compose.yaml) has lost the
entries that some worker had not read yet when it stopped, though their
senders were told they were sent. So each worker keeps what it published
during the last REPLAY_WINDOW seconds, and adds it to the stream again when it
finds another Redis process than the one it was reading; each message carries
an id of its own, and a worker delivers an id once. What a restart can still
lose: a message whose own worker stopped too before Redis came back, or one
that some worker had not read REPLAY_WINDOW seconds after it was published.

Revocations travel in the same stream, as entries of their own kind (a
`revoke` field instead of `message`), so they have the same order, catch-up
and replay; the reader hands them to the worker's open connections, not to
the chat subscribers. One that cannot be added while Redis is away is not
lost either: each worker also compares its sockets with the database every
few seconds (revocations.py).
"""

import json
import random
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from logging import Logger

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .hub import Deliver, HubUnavailable, MemoryHub, Revoke

STREAM = "{{ cookiecutter.package_name }}:chat"
# The stream is a buffer for workers that are reading again after losing
# Redis, not a history: it must hold what arrives while one is away (at most
# LAST_RETRY plus the connect and socket timeouts, under 20 s), since an entry
# trimmed before a worker read it never reaches that worker's clients. 10,000
# entries is 20 s at 500 messages a second; at chat-sized messages of a few
# hundred bytes Redis spends a few MB on it (at most 10,000 times
# WS_MAX_MESSAGE_SIZE). Approximate trimming ("~") drops whole nodes of
# entries, so each XADD stays cheap, and keeps a few more than this.
# https://redis.io/docs/latest/develop/data-types/streams/ (Capped Streams)
MAX_ENTRIES = 10_000
# Below the socket timeout, so that a blocked read that gets no entry is not
# mistaken for a dead connection.
BLOCK_MS = 1000
ENTRIES_PER_READ = 100
# How long after its XADD a message may still be unread by some worker (one
# that writes a batch of ENTRIES_PER_READ out to a thousand sockets is a few
# seconds behind): what a worker published since that long before it lost
# Redis goes into the stream again if another Redis process comes back.
REPLAY_WINDOW = 10.0
# Reconnect after 0.5 s, then 1 s, 2 s... at most 10 s, with jitter so that
# workers that lost Redis together do not return together.
FIRST_RETRY = 0.5
LAST_RETRY = 10.0
NOT_SENT = "broadcast unavailable; the message was not sent"


class RedisHub:
    def __init__(self, url: str, logger: Logger) -> None:
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=5,
            # redis-py would otherwise resend a command whose connection broke,
            # with backoff: an XADD that Redis had already stored would then be
            # stored twice, and a publisher would wait seconds for its error.
            # The reader has a reconnect loop of its own.
            # https://redis.readthedocs.io/en/stable/retry.html
            retry=Retry(NoBackoff(), 0),
        )
        self._logger = logger
        self._local = MemoryHub()
        # Set once the reader knows where in the stream this worker starts.
        self._positioned = threading.Event()
        self._reader: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # (monotonic time, stream entry) of what this worker published lately,
        # for a replay. Bounded, for a reader that stays away long.
        self._published: deque[tuple[float, dict]] = deque(maxlen=MAX_ENTRIES)
        self._published_lock = threading.Lock()

    def subscribe(self, deliver: Deliver) -> Callable[[], None]:
        self.start()
        # A fresh reader needs a moment; let the client's first message find
        # it ready rather than refused.
        self._positioned.wait(timeout=2)
        return self._local.subscribe(deliver)

    def publish(self, message: Mapping) -> None:
        # Until this worker has a place in the stream to read on from, an entry
        # added now could fall before it and never reach this worker's own
        # clients. Once it has one, an entry waits in the stream for a reader
        # that is reconnecting, so there is nothing to refuse.
        if not self._positioned.is_set():
            raise HubUnavailable(NOT_SENT)
        entry = {
            "id": uuid.uuid4().hex,
            "message": json.dumps(message),
            # For chat_delivery_seconds: from here to each socket, whichever
            # worker holds it.
            "published": repr(time.time()),
        }
        try:
            self._append(entry)
        except redis.RedisError as error:
            self._logger.warning("publishing to Redis failed: %s", error)
            raise HubUnavailable(NOT_SENT) from None

    def revoke(self, user_id: int, version: int) -> None:
        # This worker's sockets at once, whatever becomes of the entry; the
        # entry comes back here too, and closes nothing more.
        self._local.revoke(user_id, version)
        revocation = json.dumps({"user": user_id, "version": version})
        try:
            self._append({"id": uuid.uuid4().hex, "revoke": revocation})
        except redis.RedisError as error:
            self._logger.warning(
                "could not send the revocation of user %s through Redis (%s); the "
                "other workers close its sockets at their next database check",
                user_id,
                error,
            )

    def on_revoke(self, close: Revoke) -> None:
        self._local.on_revoke(close)

    def _append(self, entry: dict) -> None:
        """XADD `entry`, kept for a replay unless the XADD fails."""
        # Kept before the XADD: the reader may find Redis gone and look for
        # what to replay before this thread runs again after the reply.
        published = (time.monotonic(), entry)
        with self._published_lock:
            self._published.append(published)
        try:
            self._add(self._redis, entry)
        except redis.RedisError:
            with self._published_lock, suppress(ValueError):
                self._published.remove(published)
            raise

    def check(self) -> None:
        self.start()
        try:
            self._redis.ping()
        except redis.RedisError as error:
            raise HubUnavailable(f"Redis does not answer: {error}") from None
        if not self._positioned.wait(timeout=2):
            raise HubUnavailable("not reading the chat from Redis yet")

    def start(self) -> None:
        """Read the stream. gunicorn.conf.py calls this when a worker has
        booted; otherwise the first subscriber or readiness check does. Never
        before gunicorn forks: a thread does not survive the fork."""
        with self._start_lock:
            if self._reader is None:
                self._reader = threading.Thread(
                    target=self._read_forever, name="redis-hub", daemon=True
                )
                self._reader.start()

    def _read_forever(self) -> None:
        last_id = None  # of the newest entry read
        run_id = None  # of the Redis process it was read from
        lost_at = None  # when the reader lost Redis, until it reads again
        retry = FIRST_RETRY
        # As many as the stream holds: a replay repeats far fewer.
        delivered = DeliveredIds(MAX_ENTRIES)
        while True:
            try:
                if last_id is None:
                    run_id = self._run_id()
                    last_id = self._stream_end()
                    self._positioned.set()
                elif lost_at is not None:
                    now_run_id = self._run_id()
                    if now_run_id != run_id:
                        self._replay(lost_at)
                        run_id = now_run_id
                # From the last entry seen rather than "$" (whatever comes
                # after this call): entries added between two reads, or while
                # Redis was away, are read too. After a restart that lost the
                # stream, new entries still come after `last_id`: their ids
                # begin with Redis's clock in milliseconds (a Redis on another
                # host whose clock is behind by more than the outage would
                # give ids below it, and they would be skipped).
                # https://redis.io/docs/latest/develop/data-types/streams/ (Entry IDs)
                streams = self._redis.xread(
                    {STREAM: last_id}, count=ENTRIES_PER_READ, block=BLOCK_MS
                )
            except (redis.RedisError, OSError) as error:
                if lost_at is None:
                    lost_at = time.monotonic()
                delay = retry * random.uniform(0.5, 1.0)  # noqa: S311  (jitter)
                self._logger.warning(
                    "cannot read the chat stream in Redis (%s); retrying in %.1f s",
                    error,
                    delay,
                )
                time.sleep(delay)
                retry = min(retry * 2, LAST_RETRY)
                continue
            if lost_at is None:
                self._forget_published(before=time.monotonic() - REPLAY_WINDOW)
            else:
                self._logger.warning("reading the chat stream in Redis again")
                lost_at = None
                retry = FIRST_RETRY
            for _stream, entries in streams:
                for entry_id, fields in entries:
                    last_id = entry_id
                    if delivered.first_time(fields.get(b"id")):
                        self._deliver(fields)

    def _add(self, client, entry: dict) -> None:
        client.xadd(STREAM, entry, maxlen=MAX_ENTRIES, approximate=True)

    def _run_id(self) -> str:
        """Which Redis process answers: another one after a restart. Where an
        ACL forbids INFO (it is in @dangerous) every reconnect counts as a
        new process: a replay more, which workers that had it skip."""
        try:
            return self._redis.info("server")["run_id"]
        except redis.ResponseError:
            return uuid.uuid4().hex

    def _stream_end(self) -> bytes:
        """The id of the newest entry: a fresh worker reads what comes after
        it, and not the backlog. "0-0" when there is no stream yet, so that
        its first entry is read whenever it comes."""
        newest = self._redis.xrevrange(STREAM, count=1)
        return newest[0][0] if newest else b"0-0"

    def _replay(self, lost_at: float) -> None:
        """Add again what this worker published from shortly before it lost
        Redis until now: the Redis that had it may be gone before every worker
        read it. That includes what went to a Redis that came and went while
        this reader was waiting to reconnect. Workers that had it skip it by
        its id."""
        with self._published_lock:
            recent = [
                entry
                for published_at, entry in self._published
                if published_at >= lost_at - REPLAY_WINDOW
            ]
        if not recent:
            return
        pipeline = self._redis.pipeline(transaction=False)
        for entry in recent:
            self._add(pipeline, entry)
        pipeline.execute()
        self._logger.warning(
            "Redis is another process than before (restarted?); sent the last %d "
            "chat messages and revocations of this worker again",
            len(recent),
        )

    def _forget_published(self, before: float) -> None:
        with self._published_lock:
            while self._published and self._published[0][0] < before:
                self._published.popleft()

    def _deliver(self, fields: dict) -> None:
        try:
            if b"revoke" in fields:
                revocation = json.loads(fields[b"revoke"])
                self._local.revoke(revocation["user"], revocation["version"])
            else:
                published_at = float(fields.get(b"published", time.time()))
                self._local.publish_payload(fields[b"message"].decode(), published_at)
        except Exception:
            # One entry or socket that fails must not stop this worker's chat.
            self._logger.exception("handling an entry of the chat stream failed")


class DeliveredIds:
    """The ids of the last `size` messages this worker delivered, so that one
    added again by a replay reaches its clients once."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def first_time(self, message_id: bytes | None) -> bool:
        if message_id is None:
            return True
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True
