"""The chat hub: who is listening, and how a message reaches them.

A handler subscribes a `deliver` function for its socket and publishes what
its client says; the hub calls every subscriber's `deliver` with the message
serialized once, and observes in `chat_delivery_seconds` (../metrics.py) how
long after its publication each socket got it.

Here are the interface, `Hub`, and `MemoryHub`, which reaches the sockets of
this process only.
{%- if cookiecutter.broadcast == "redis" %} `RedisHub` (redis_hub.py) reaches every worker of
every instance.
{%- endif %} `create_hub` in `__init__.py` chooses the one this project uses.

The hub carries one other thing the same way: revocations. When a user's
credentials are revoked (a logout, a new password), `revoke` reaches every
worker the hub reaches, and each closes the user's sockets it holds through
the function given to `on_revoke` (revocations.py), echo sockets included:
they are not chat subscribers.
"""

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from flask import current_app

from .. import metrics

# Writes a message to one socket; False when the socket is gone.
Deliver = Callable[[str], bool]
# (user id, credential version): close the user's sockets opened under an
# older version.
Revoke = Callable[[int, int], None]


class HubUnavailable(RuntimeError):
    """The hub cannot publish right now; nothing was sent."""


class Hub(Protocol):
    def subscribe(self, deliver: Deliver) -> Callable[[], None]:
        """Start delivering to `deliver`; call the result to stop."""

    def publish(self, message: Mapping) -> None:
        """Send to every subscriber, or raise HubUnavailable."""

    def check(self) -> None:
        """Raise HubUnavailable when publishing would fail."""

    def revoke(self, user_id: int, version: int) -> None:
        """Have every worker close the user's sockets opened under a credential
        version below `version`. Never raises: what it cannot reach, the
        workers' own check of the database closes (revocations.py)."""

    def on_revoke(self, close: Revoke) -> None:
        """How this worker closes its sockets when a revocation arrives."""


class MemoryHub:
    """Fan-out within one process: one gunicorn worker, not several."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[Deliver] = set()
        self._close_revoked: Revoke | None = None

    def subscribe(self, deliver: Deliver) -> Callable[[], None]:
        with self._lock:
            self._subscribers.add(deliver)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.discard(deliver)

        return unsubscribe

    def publish(self, message: Mapping) -> None:
        self.publish_payload(json.dumps(message), published_at=time.time())

    def publish_payload(self, payload: str, published_at: float) -> None:
        """Deliver an already serialized message, published at `published_at`
        (seconds since the epoch: it may come from another host)."""
        with self._lock:
            subscribers = list(self._subscribers)
        observe = metrics.CHAT_DELIVERY.observe
        for deliver in subscribers:
            if deliver(payload):
                observe(time.time() - published_at)

    def check(self) -> None:
        return None

    def revoke(self, user_id: int, version: int) -> None:
        if self._close_revoked is not None:
            self._close_revoked(user_id, version)

    def on_revoke(self, close: Revoke) -> None:
        self._close_revoked = close


def current_hub() -> Hub:
    return current_app.extensions["chat_hub"]
