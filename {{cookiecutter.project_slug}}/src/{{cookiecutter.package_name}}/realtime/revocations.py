"""Closing the open sockets of a user whose credentials were revoked.

Logging out and changing a password raise the user's credential version
(auth/models.py), which voids every session and token issued before: their
next request or handshake is anonymous. A socket opened under one of them
would stay open all the same, so it is closed with 1008 "credentials revoked":

- at once, through the hub: in this process with broadcast = memory; on every
  worker of every instance, through the Redis stream, with broadcast = redis;
- within RECHECK_EVERY seconds otherwise: each worker compares its sockets'
  versions with the database's. That reaches what the hub cannot:
  `users set-password` run from a shell while the hub lives in a worker's
  memory, the other workers of a memory hub, a revocation sent while Redis
  was away, and a handshake that loaded its user just before the change.
"""

import sys
import threading
import time
from logging import Logger

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from ..extensions import db
from .connections import CREDENTIALS_REVOKED, OpenConnections
from .hub import Revoke

# A few seconds of a socket that outlives its credentials, against one small
# query per worker (holding sockets) that often.
RECHECK_EVERY = 5.0
# Users per query: far below any database's limit on bound parameters.
USERS_PER_QUERY = 500
# The version an account that no longer exists is revoked up to.
ACCOUNT_GONE = sys.maxsize


def close_revoked_sockets(user_id: int, version: int) -> None:
    """Close the user's sockets opened under a credential version below
    `version`, everywhere the hub reaches. Call it once that version is
    committed, so that a handshake after it cannot load the old one."""
    current_app.extensions["chat_hub"].revoke(user_id, version)


def closer(connections: OpenConnections, logger: Logger) -> Revoke:
    """What the hub calls, in each worker, to close a user's revoked sockets."""

    def close(user_id: int, version: int) -> None:
        closed = connections.revoke(user_id, version)
        if closed:
            logger.info(
                "closed %d WebSocket(s) of user %s with 1008: %s",
                closed,
                user_id,
                CREDENTIALS_REVOKED,
            )

    return close


class CredentialCheck:
    """Every RECHECK_EVERY seconds, close the sockets of this worker whose
    user's credential version in the database has moved past theirs."""

    def __init__(self, app: Flask, connections: OpenConnections, close: Revoke) -> None:
        self._app = app
        self._connections = connections
        self._close = close
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """From the worker's first socket on: never before gunicorn forks, as
        a thread does not survive the fork."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._check_forever, name="credential-check", daemon=True
                )
                self._thread.start()

    def _check_forever(self) -> None:
        failing = False
        while True:
            time.sleep(RECHECK_EVERY)
            try:
                self.check()
            except Exception as error:
                # Said once, not every round, while it goes on failing; and
                # whatever it is, the next round still happens.
                if not failing and isinstance(error, SQLAlchemyError):
                    self._app.logger.warning(
                        "cannot check the credentials of open WebSockets: %s",
                        (str(error).strip().splitlines() or [repr(error)])[0],
                    )
                elif not failing:
                    self._app.logger.exception(
                        "checking the credentials of open WebSockets failed"
                    )
                failing = True
                continue
            if failing:
                self._app.logger.warning(
                    "checking the credentials of open WebSockets again"
                )
                failing = False

    def check(self) -> None:
        held = self._connections.oldest_credential_versions()
        if not held:
            return
        current = self._current_versions(list(held))
        for user_id, oldest in held.items():
            version = current.get(user_id, ACCOUNT_GONE)
            if version > oldest:
                self._close(user_id, version)

    def _current_versions(self, user_ids: list[int]) -> dict[int, int]:
        # Imported here: auth imports this module (to close sockets on logout).
        from ..auth.models import credential_versions

        with self._app.app_context():
            try:
                found: dict[int, int] = {}
                for start in range(0, len(user_ids), USERS_PER_QUERY):
                    batch = user_ids[start : start + USERS_PER_QUERY]
                    found.update(credential_versions(batch))
                return found
            finally:
                # Back to the pool: the next round is seconds away.
                db.session.remove()
