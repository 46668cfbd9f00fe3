"""The WebSocket routes. `websocket_route` (guards.py) brings everything else a
route needs: the gate before the handshake, `login_required`, the connection
and its end."""

import json
import time

from flask import Blueprint, current_app

from .connections import POLICY_VIOLATION, Connection
from .guards import websocket_route
from .hub import HubUnavailable, current_hub

bp = Blueprint("realtime", __name__)


@websocket_route("/ws/echo", bp=bp)
def echo(connection: Connection) -> None:
    """Send every message back unchanged: text as text, binary as binary."""
    while True:
        connection.send(connection.receive())


@websocket_route("/ws/chat", bp=bp)
def chat(connection: Connection) -> None:
    """Relay `{"text": ...}` from this client to every chat client."""
    hub = current_hub()
    rate = MessageRate(current_app.config["WS_MAX_MESSAGES_PER_SECOND"])
    unsubscribe = hub.subscribe(connection.deliver)
    user = connection.user
    try:
        while True:
            raw = connection.receive()
            if not rate.allow():
                if rate.sustained_flood():
                    connection.close(POLICY_VIOLATION, "too many messages")
                    return
                error = f"too many messages; at most {rate.per_second} a second"
                connection.send(json.dumps({"type": "error", "error": error}))
                continue
            try:
                text = parse_chat_message(raw)
                hub.publish(
                    {
                        "type": "message",
                        "user": user,
                        "text": text,
                        "ts": round(time.time(), 3),
                    }
                )
            except (InvalidChatMessage, HubUnavailable) as error:
                connection.send(json.dumps({"type": "error", "error": str(error)}))
    finally:
        unsubscribe()


class InvalidChatMessage(ValueError):
    pass


def parse_chat_message(raw: str | bytes) -> str:
    """The text of a chat message `{"text": "..."}`, or InvalidChatMessage."""
    expected = 'expected a JSON object like {"text": "hello"}'
    if not isinstance(raw, str):
        raise InvalidChatMessage(f"binary messages are not accepted; {expected}")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise InvalidChatMessage(f"not JSON; {expected}") from None
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        raise InvalidChatMessage(expected)
    text = message["text"].strip()
    if not text:
        raise InvalidChatMessage("text is empty")
    return text


class MessageRate:
    """At most `per_second` messages a second on average, in bursts of as many
    (a token bucket). A client that goes on past the limit for another
    `per_second` messages in a row is flooding, not bursting."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._tokens = float(per_second)
        self._updated = time.monotonic()
        self._refused_in_a_row = 0

    def allow(self) -> bool:
        now = time.monotonic()
        elapsed, self._updated = now - self._updated, now
        self._tokens = min(self.per_second, self._tokens + elapsed * self.per_second)
        if self._tokens >= 1:
            self._tokens -= 1
            self._refused_in_a_row = 0
            return True
        self._refused_in_a_row += 1
        return False

    def sustained_flood(self) -> bool:
        return self._refused_in_a_row > self.per_second
