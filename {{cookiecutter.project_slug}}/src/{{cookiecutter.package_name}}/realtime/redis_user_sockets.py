"""WS_MAX_SOCKETS_PER_USER across every worker and instance, through Redis.

Each worker counts its own sockets (`UserSockets`) and mirrors the count into a
Redis hash of its own, which it renews every RENEW_EVERY seconds. A handshake
adds up the user's sockets in the hash of every live worker and counts itself
in the same Lua script, so two handshakes cannot both take the last place.
https://redis.io/docs/latest/develop/interact/programmability/eval-intro/

A worker that dies stops counting at once: gunicorn's master forgets it
(`child_exit` in gunicorn.conf.py). A whole instance that dies stops counting
after WORKER_TTL seconds, when nothing renews its workers any more.
"""

import os
import socket
import threading
import time
from logging import Logger

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .user_sockets import UserSockets, UserSocketsUnavailable

PREFIX = "{{ cookiecutter.package_name }}:sockets"
# Sorted set: worker id -> the Redis time after which its count is stale.
WORKERS = f"{PREFIX}:workers"
RENEW_EVERY = 5
# Three renewals missed: the worker is gone, not just busy.
WORKER_TTL = 3 * RENEW_EVERY

# KEYS: the workers set, this worker's hash. ARGV: user id, limit, TTL,
# this worker's id, the prefix of every worker's hash.
ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = 0
for _, worker in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    held = held + tonumber(redis.call('HGET', ARGV[5] .. worker, ARGV[1]) or '0')
end
if held >= tonumber(ARGV[2]) then
    return 0
end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[4])
return 1
"""

# KEYS: this worker's hash. ARGV: user id.
RELEASE = """
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


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=2,
        # No resending: redis-py would otherwise send a script again after a
        # timeout, and a count that Redis ran late would then be counted
        # twice, for as long as this worker lives.
        # https://redis.readthedocs.io/en/stable/retry.html
        retry=Retry(NoBackoff(), 0),
    )


class RedisUserSockets(UserSockets):
    def __init__(self, limit: int, url: str, logger: Logger) -> None:
        super().__init__(limit)
        self._redis = connect(url)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._release = self._redis.register_script(RELEASE)
        self._renew = self._redis.register_script(RENEW)
        self._logger = logger
        # Set when a release could not reach Redis: the renewer rewrites the
        # hash from this worker's own count.
        self._out_of_sync = False
        self._renewer: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def acquire(self, user_id: int) -> bool:
        self.start()
        # This worker's own count is part of the total: no need to ask Redis
        # when it alone reaches the limit.
        if not super().acquire(user_id):
            return False
        me = worker_id(os.getpid())
        try:
            admitted = self._acquire(
                keys=[WORKERS, worker_hash(me)],
                args=[user_id, self.limit, WORKER_TTL, me, f"{PREFIX}:"],
            )
        except redis.RedisError as error:
            super().release(user_id)
            # A timeout may come after Redis ran the script and counted the
            # socket: the renewer puts this worker's true count back.
            self._out_of_sync = True
            raise UserSocketsUnavailable(f"Redis does not answer: {error}") from None
        if not admitted:
            super().release(user_id)
        return bool(admitted)

    def release(self, user_id: int) -> None:
        super().release(user_id)
        try:
            self._release(keys=[worker_hash(worker_id(os.getpid()))], args=[user_id])
        except redis.RedisError:
            self._out_of_sync = True

    def start(self) -> None:
        """Renew this worker's count in Redis, from its first socket on."""
        with self._start_lock:
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew_forever, name="user-sockets", daemon=True
                )
                self._renewer.start()

    def _renew_forever(self) -> None:
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
        held = self.held()
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(worker_hash(me))
            if held:
                pipe.hset(worker_hash(me), mapping=held)
                pipe.expire(worker_hash(me), WORKER_TTL)
            pipe.execute()
        # A socket opened or closed meanwhile: rewrite again next time.
        self._out_of_sync = held != self.held()


def forget_worker(url: str, pid: int) -> None:
    """Stop counting the sockets of a worker that has exited."""
    me = worker_id(pid)
    with connect(url) as client, client.pipeline(transaction=True) as pipe:
        pipe.zrem(WORKERS, me)
        pipe.delete(worker_hash(me))
        pipe.execute()
