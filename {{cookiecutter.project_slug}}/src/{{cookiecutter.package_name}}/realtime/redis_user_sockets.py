"""WS_MAX_SOCKETS_PER_USER across every worker and instance, through Redis.

Redis keeps, in a hash per worker, how many of each user's places that worker
has leased; a Lua script adds up the leases of every live worker and grants
one more only below the limit, so two handshakes cannot both take the last
place, and a worker admits a socket only into a place it holds a lease for:
the sockets open never exceed the leases, nor the leases the limit.
https://redis.io/docs/latest/develop/interact/programmability/eval-intro/

A closed socket's lease goes back as the socket's request ends, so the user
may open another on any worker at once. A handshake that needs a lease while
Redis does not answer is refused (`UserSocketsUnavailable`: 503); a place
that could not be given back stays counted (the user may be refused early,
never admitted past the limit) until the worker's next renewal rewrites its
hash from what it holds.

A worker that dies stops counting at once: gunicorn's master forgets its
leases (`child_exit` in gunicorn.conf.py). So does a stopping worker, which
gives nothing back one socket at a time: its thousands of closes would each
wait for Redis. A whole instance that dies stops counting after WORKER_TTL
seconds, when nothing renews its workers any more.
"""

import functools
import os
import socket
import threading
import time
from logging import Logger

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from .user_sockets import UserSockets, UserSocketsUnavailable

PREFIX = "{{ cookiecutter.package_name }}:sockets"
# Sorted set: worker id -> the Redis time after which its leases are stale.
WORKERS = f"{PREFIX}:workers"
RENEW_EVERY = 5
# Three renewals missed: the worker is gone, not just busy.
WORKER_TTL = 3 * RENEW_EVERY
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

# KEYS: this worker's hash. ARGV: user id.
GIVE_BACK = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
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


@functools.lru_cache(maxsize=8)
def worker_keys(pid: int) -> tuple[str, str]:
    """(the worker's id, its hash's key): asked for twice a socket, and the
    host's name is a system call."""
    me = worker_id(pid)
    return me, worker_hash(me)


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


class Scripts:
    """Runs the lease and the giving back, one round trip each, on the path of
    every handshake.

    Through redis-py's client, each EVALSHA also took a connection from a pool
    that first polls it for bytes left unread, went through a retry wrapper
    (with no retries), the response callbacks and the client's observability
    counters: twice the Python calls of the command itself, a twelfth of the
    instructions of a whole handshake. Here a call takes an idle connection
    from a list, checks it as that pool does (a connection that Redis closed
    is made again), sends the command and reads its answer. The connections are
    redis-py's own, made from the same URL, so its password, TLS, database
    and timeouts apply. A connection on which anything failed (a timeout
    included, whose answer may still come) is closed, never put back: no
    answer left unread can reach the next command.

    A Redis that does not know a script (it restarted, or its scripts were
    flushed) answers NOSCRIPT without running it; the script is then sent
    whole with EVAL, which Redis also caches for the next EVALSHA.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._connect = functools.partial(
            pool.connection_class, **pool.connection_kwargs
        )
        self._idle: list[redis.Connection] = []
        self._pid = os.getpid()

    def run(self, script: Script, keys: list, args: list):
        connection = self._connection()
        try:
            try:
                connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                answer = connection.read_response()
            except NoScriptError:
                connection.send_command("EVAL", script.script, len(keys), *keys, *args)
                answer = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        self._idle.append(connection)
        return answer

    def _connection(self) -> redis.Connection:
        if self._pid != os.getpid():  # forked: the parent's are not ours
            self._idle, self._pid = [], os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._connect()  # it connects as it first sends
        # Readable while idle, or failing: Redis closed it (a restart, its
        # idle timeout). It connects again, rather than fail a handshake.
        try:
            usable = not connection.can_read()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            usable = False
        if not usable:
            connection.disconnect()
        return connection


class RedisUserSockets(UserSockets):
    """`UserSockets` (this worker's open sockets per user), each in a place
    this worker leases from Redis."""

    def __init__(self, limit: int, url: str, logger: Logger) -> None:
        super().__init__(limit)
        self._redis = connect(url)
        self._lease = self._redis.register_script(LEASE)
        self._give_back = self._redis.register_script(GIVE_BACK)
        self._renew = self._redis.register_script(RENEW)
        self._scripts = Scripts(self._redis)
        self._logger = logger
        # Calls that change this worker's hash in Redis (a lease asked, a
        # place given back) under way, and how many were ever made. A rewrite
        # of the hash (after Redis lost or may have miscounted it) is only
        # trusted if neither moved meanwhile.
        self._calling = 0
        self._calls = 0
        # Set when Redis may hold another count than this worker's: the
        # keeper rewrites the hash from `_held`.
        self._out_of_sync = False
        self._keeper: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def acquire(self, user_id: int) -> bool:
        self.start()
        with self._lock:
            if self._held[user_id] >= self.limit:
                return False
            self._calling += 1
            self._calls += 1
        me, my_hash = worker_keys(os.getpid())
        try:
            granted = self._scripts.run(
                self._lease,
                keys=[WORKERS, my_hash],
                args=[user_id, self.limit, WORKER_TTL, me, f"{PREFIX}:"],
            )
        except redis.RedisError as error:
            with self._lock:
                self._calling -= 1
                # A timeout may come after Redis granted the lease: the
                # keeper puts this worker's true count back.
                self._out_of_sync = True
            raise UserSocketsUnavailable(f"Redis does not answer: {error}") from None
        with self._lock:
            self._calling -= 1
            if granted:
                self._held[user_id] += 1
        return bool(granted)

    def release(self, user_id: int, worker_stopping: bool = False) -> None:
        """The socket is closed: its lease goes back to Redis, unless the
        worker is stopping (the master forgets all of its leases then)."""
        with self._lock:
            # Counted down here first: if Redis misses it, Redis counts more
            # than this worker holds (the keeper's rewrite mends it), never less.
            self._count_down(user_id)
            if worker_stopping:
                return
            self._calling += 1
            self._calls += 1
        try:
            self._scripts.run(
                self._give_back, keys=[worker_keys(os.getpid())[1]], args=[user_id]
            )
        except redis.RedisError as error:
            self._out_of_sync = True
            self._logger.warning("could not give a socket's place back: %s", error)
        finally:
            with self._lock:
                self._calling -= 1

    def start(self) -> None:
        """Renew this worker's leases from its first socket on (never before
        gunicorn forks)."""
        if self._keeper is not None:
            return
        with self._start_lock:
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep_forever, name="user-sockets", daemon=True
                )
                self._keeper.start()

    def _keep_forever(self) -> None:
        while True:
            time.sleep(RENEW_EVERY)
            me = worker_id(os.getpid())
            try:
                hash_kept = self._renew(
                    keys=[WORKERS, worker_hash(me)], args=[WORKER_TTL, me]
                )
                if self._out_of_sync or (not hash_kept and self.held()):
                    self._rewrite(me)
            except redis.RedisError as error:
                self._out_of_sync = True
                self._logger.warning("could not renew the socket count: %s", error)

    def _rewrite(self, me: str) -> None:
        with self._lock:
            if self._calling:
                return  # a lease or a place on its way: next time
            held, calls = dict(self._held), self._calls
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(worker_hash(me))
            if held:
                pipe.hset(worker_hash(me), mapping=held)
                pipe.expire(worker_hash(me), WORKER_TTL)
            pipe.execute()
        with self._lock:
            # A lease asked for meanwhile may have been overwritten, or a
            # place given back twice: rewrite again next time.
            self._out_of_sync = calls != self._calls or held != self._held


def forget_worker(url: str, pid: int) -> None:
    """Stop counting the leases of a worker that has exited."""
    me = worker_id(pid)
    with connect(url) as client, client.pipeline(transaction=True) as pipe:
        pipe.zrem(WORKERS, me)
        pipe.delete(worker_hash(me))
        pipe.execute()
