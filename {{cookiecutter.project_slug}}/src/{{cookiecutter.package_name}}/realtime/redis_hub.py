"""Chat fan-out through Redis pub/sub, across workers and app instances.

Every worker subscribes to one channel and hands what arrives to the sockets
it holds; publishing goes through Redis, so a message reaches every chat
client wherever it is connected.
https://redis.io/docs/latest/develop/interact/pubsub/

When Redis goes away the service stays up: publishing raises HubUnavailable
(the handler tells the sender, nothing is claimed as sent), `check()` fails so
/readyz answers 503, and the subscriber reconnects with backoff and resumes.
"""

import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from logging import Logger

import redis

from .hub import Deliver, HubUnavailable, MemoryHub

CHANNEL = "{{ cookiecutter.package_name }}:chat"
# Reconnect after 0.5 s, then 1 s, 2 s... at most 10 s, with jitter so that
# workers that lost Redis together do not return together.
FIRST_RETRY = 0.5
LAST_RETRY = 10.0


class RedisHub:
    def __init__(self, url: str, logger: Logger) -> None:
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=5,
            # PING an idle subscription now and then, so a connection that
            # died without a word is noticed.
            health_check_interval=15,
        )
        self._logger = logger
        self._local = MemoryHub()
        self._subscribed = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def subscribe(self, deliver: Deliver) -> Callable[[], None]:
        self.start()
        # A fresh listener needs a moment; let the client's first message find
        # it ready rather than refused.
        self._subscribed.wait(timeout=2)
        return self._local.subscribe(deliver)

    def publish(self, message: Mapping) -> None:
        # Published while this worker is not listening, a message would be
        # lost for its own clients: refuse rather than claim it was sent.
        if not self._subscribed.is_set():
            raise HubUnavailable("broadcast unavailable; the message was not sent")
        try:
            self._redis.publish(CHANNEL, json.dumps(message))
        except redis.RedisError as error:
            self._logger.warning("publishing to Redis failed: %s", error)
            raise HubUnavailable(
                "broadcast unavailable; the message was not sent"
            ) from None

    def check(self) -> None:
        self.start()
        try:
            self._redis.ping()
        except redis.RedisError as error:
            raise HubUnavailable(f"Redis does not answer: {error}") from None
        if not self._subscribed.wait(timeout=2):
            raise HubUnavailable("not subscribed to Redis yet")

    def start(self) -> None:
        """Listen to the channel. gunicorn.conf.py calls this when a worker has
        booted; otherwise the first subscriber or readiness check does. Never
        before gunicorn forks: a thread does not survive the fork."""
        with self._start_lock:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen_forever, name="redis-hub", daemon=True
                )
                self._listener.start()

    def _listen_forever(self) -> None:
        retry = FIRST_RETRY
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(CHANNEL)
                self._subscribed.set()
                if retry > FIRST_RETRY:
                    self._logger.warning("subscribed to Redis again")
                retry = FIRST_RETRY
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._local.publish_payload(message["data"].decode())
            except (redis.RedisError, OSError) as error:
                self._subscribed.clear()
                self._logger.warning(
                    "lost the Redis subscription (%s); retrying in %.1f s",
                    error,
                    retry,
                )
            finally:
                pubsub.close()
            time.sleep(retry * random.uniform(0.5, 1.0))
            retry = min(retry * 2, LAST_RETRY)
