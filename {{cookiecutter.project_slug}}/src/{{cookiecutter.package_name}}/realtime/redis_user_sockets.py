"""WS_MAX_SOCKETS_PER_USER across every worker and instance, through Redis.

Redis keeps, in a hash per worker, how many of each user's places that worker
has leased; a Lua script adds up the leases of every live worker and grants
one more only below the limit, so two handshakes cannot both take the last
place, and a worker admits a socket only into a place it holds a lease for:
the sockets open never exceed the leases, nor the leases the limit.
https://redis.io/docs/latest/develop/interact/programmability/eval-intro/

A closed socket's place stays leased to its worker for LEASE_IDLE seconds:
a socket the same user opens on that worker meanwhile takes it without asking
Redis (a reconnection, a burst of one client's sockets), and so does its
close. After that the worker gives the place back (every GIVE_BACK_EVERY
seconds, one call for all the places it is done with), and any worker can
lease it. So a user who closes a socket can open another on the same worker at
once, and on any other worker within LEASE_IDLE + GIVE_BACK_EVERY seconds
(about 1.25 s): less than the RETRY_AFTER_SECONDS a refused client is told to
wait (guards.py). A handshake that needs a lease while Redis does not answer
is refused (`UserSocketsUnavailable`: 503).

A worker that dies stops counting at once: gunicorn's master forgets its
leases (`child_exit` in gunicorn.conf.py). A whole instance that dies stops
counting after WORKER_TTL seconds, when nothing renews its workers any more.
"""

import os
import socket
import threading
import time
from collections import Counter
from logging import Logger

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .user_sockets import UserSockets, UserSocketsUnavailable

PREFIX = "{{ cookiecutter.package_name }}:sockets"
# Sorted set: worker id -> the Redis time after which its leases are stale.
WORKERS = f"{PREFIX}:workers"
RENEW_EVERY = 5
# Three renewals missed: the worker is gone, not just busy.
WORKER_TTL = 3 * RENEW_EVERY
# Seconds an unused lease stays with its worker, and how often the worker
# looks for those to give back. Together: how late another worker may refuse
# a place that a closed socket left (see the module's docstring).
LEASE_IDLE = 1.0
GIVE_BACK_EVERY = 0.25

# KEYS: the workers set, this worker's hash. ARGV: user id, limit, TTL,
# this worker's id, the prefix of every worker's hash.
LEASE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local leased = 0
for _, worker in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    leased = leased + tonumber(redis.call('HGET', ARGV[5] .. worker, ARGV[1]) or '0')
end
if leased >= tonumber(ARGV[2]) then
    return 0
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
return 1
"""

# KEYS: this worker's hash. ARGV: user id, places, user id, places...
GIVE_BACK = """
for i = 1, #ARGV, 2 do
    if redis.call('HINCRBY', KEYS[1], ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
        redis.call('HDEL', KEYS[1], ARGV[i])
    end
end
"""

# KEYS: the workers set, this worker's hash. ARGV: TTL, this worker's id.
# Returns 0 when the hash is gone (Redis restarted empty).
RENEW = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return redis.call('EXPIRE', KEYS[2], ARGV[1])
"""


def worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def worker_hash(worker: str) -> str:
    return f"{PREFIX}:{worker}"


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=2,
        # No resending: redis-py would otherwise send a script again after a
        # timeout, and a lease that Redis granted late would then be granted
        # twice.
        # https://redis.readthedocs.io/en/stable/retry.html
        retry=Retry(NoBackoff(), 0),
    )


class RedisUserSockets(UserSockets):
    """`UserSockets` (this worker's open sockets per user) plus the places
    this worker leases from Redis for them: never fewer than it has open."""

    def __init__(self, limit: int, url: str, logger: Logger) -> None:
        super().__init__(limit)
        self._redis = connect(url)
        self._lease = self._redis.register_script(LEASE)
        self._give_back = self._redis.register_script(GIVE_BACK)
        self._renew = self._redis.register_script(RENEW)
        self._logger = logger
        self._leased: Counter[int] = Counter()
        # user id -> monotonic time of their last close here, while they
        # may have a lease they do not use.
        self._idle_since: dict[int, float] = {}
        # Leases asked of Redis and not yet counted here; and how many were
        # ever asked. A rewrite of this worker's hash (after Redis lost or
        # may have miscounted it) is only trusted if neither moved meanwhile.
        self._asking = 0
        self._asked = 0
        # Set when Redis may hold another count than this worker's: the
        # keeper rewrites the hash from `_leased`.
        self._out_of_sync = False
        self._keeper: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def acquire(self, user_id: int) -> bool:
        self.start()
        with self._lock:
            held = self._held[user_id]
            if held >= self.limit:
                return False
            if held < self._leased[user_id]:
                # A place this worker leased already and nobody uses.
                self._held[user_id] = held + 1
                return True
            self._asking += 1
            self._asked += 1
        me = worker_id(os.getpid())
        try:
            granted = self._lease(
                keys=[WORKERS, worker_hash(me)],
                args=[user_id, self.limit, WORKER_TTL, me, f"{PREFIX}:"],
            )
        except redis.RedisError as error:
            with self._lock:
                self._asking -= 1
                # A timeout may come after Redis granted the lease: the
                # keeper puts this worker's true count back.
                self._out_of_sync = True
            raise UserSocketsUnavailable(f"Redis does not answer: {error}") from None
        with self._lock:
            self._asking -= 1
            if granted:
                self._leased[user_id] += 1
                self._held[user_id] += 1
        return bool(granted)

    def release(self, user_id: int) -> None:
        """The socket is closed; its lease stays here for LEASE_IDLE seconds."""
        with self._lock:
            self._held[user_id] -= 1
            if self._held[user_id] <= 0:
                del self._held[user_id]
            self._idle_since[user_id] = time.monotonic()

    def leased(self) -> dict[int, int]:
        """{user id: places} this worker leases from Redis."""
        with self._lock:
            return dict(self._leased)

    def start(self) -> None:
        """Renew this worker's leases, and give back unused ones, from its
        first socket on (never before gunicorn forks)."""
        if self._keeper is not None:
            return
        with self._start_lock:
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep_forever, name="user-sockets", daemon=True
                )
                self._keeper.start()

    def _keep_forever(self) -> None:
        renewed = time.monotonic()
        while True:
            time.sleep(GIVE_BACK_EVERY)
            me = worker_id(os.getpid())
            try:
                self._give_back_unused(me)
                if time.monotonic() - renewed >= RENEW_EVERY:
                    renewed = time.monotonic()
                    hash_kept = self._renew(
                        keys=[WORKERS, worker_hash(me)], args=[WORKER_TTL, me]
                    )
                    if self._out_of_sync or (not hash_kept and self.leased()):
                        self._rewrite(me)
            except redis.RedisError as error:
                self._out_of_sync = True
                self._logger.warning("could not renew the socket count: %s", error)

    def _give_back_unused(self, me: str) -> None:
        """Give Redis back the leases unused for LEASE_IDLE seconds."""
        unused: dict[int, int] = {}
        with self._lock:
            if not self._idle_since:
                return
            since = time.monotonic() - LEASE_IDLE
            for user_id, idle_since in list(self._idle_since.items()):
                if idle_since > since:
                    continue
                del self._idle_since[user_id]
                spare = self._leased[user_id] - self._held[user_id]
                if spare > 0:
                    unused[user_id] = spare
                    self._leased[user_id] -= spare
                if self._leased[user_id] <= 0:
                    del self._leased[user_id]
        if not unused:
            return
        # Counted down here first: if Redis misses it, Redis counts more than
        # this worker holds (the keeper's next rewrite mends it), never less.
        try:
            self._give_back(
                keys=[worker_hash(me)],
                args=[item for pair in unused.items() for item in pair],
            )
        except redis.RedisError:
            self._out_of_sync = True
            raise

    def _rewrite(self, me: str) -> None:
        with self._lock:
            if self._asking:
                return  # a lease is on its way: next time
            leased, asked = dict(self._leased), self._asked
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(worker_hash(me))
            if leased:
                pipe.hset(worker_hash(me), mapping=leased)
                pipe.expire(worker_hash(me), WORKER_TTL)
            pipe.execute()
        with self._lock:
            # A lease asked for meanwhile may have been overwritten, or one
            # given back: rewrite again next time.
            self._out_of_sync = asked != self._asked or leased != self._leased


def forget_worker(url: str, pid: int) -> None:
    """Stop counting the leases of a worker that has exited."""
    me = worker_id(pid)
    with connect(url) as client, client.pipeline(transaction=True) as pipe:
        pipe.zrem(WORKERS, me)
        pipe.delete(worker_hash(me))
        pipe.execute()
