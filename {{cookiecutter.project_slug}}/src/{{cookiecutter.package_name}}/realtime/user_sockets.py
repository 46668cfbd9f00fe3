"""How many sockets each user holds, against WS_MAX_SOCKETS_PER_USER.

Without a limit, one account (one bearer token) can take every slot of a
worker and lock everyone else out.
{% if cookiecutter.broadcast == "redis" %}
`UserSockets` counts the sockets of this worker; `RedisUserSockets`
(redis_user_sockets.py) holds them to the limit across every worker and
instance, with places each worker leases from Redis.
{%- else %}
The count is per worker: with several workers a user may hold that many
sockets in each.
{%- endif %}
"""

import threading
from collections import Counter


class UserSocketsUnavailable(RuntimeError):
    """The count cannot be checked right now; nothing was counted."""


class UserSockets:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._held: Counter[int] = Counter()

    def acquire(self, user_id: int) -> bool:
        """Count one more socket for the user; False when they hold the limit."""
        with self._lock:
            if self._held[user_id] >= self.limit:
                return False
            self._held[user_id] += 1
            return True

    def release(self, user_id: int, worker_stopping: bool = False) -> None:
        """The user's socket is closed; `worker_stopping` once this worker
        has closed every socket on its way out."""
        with self._lock:
            self._count_down(user_id)

    def _count_down(self, user_id: int) -> None:
        self._held[user_id] -= 1
        if self._held[user_id] <= 0:
            del self._held[user_id]

    def held(self) -> dict[int, int]:
        """{user id: sockets} in this worker."""
        with self._lock:
            return dict(self._held)
