"""The WebSocket routes. The guard in guards.py has already let the client in;
`login_required` stays on each handler as the second lock."""

import json
import time

from flask_login import current_user, login_required

from ..extensions import sock
from . import bp
from .connections import Connection, websocket_handler
from .hub import HubUnavailable, current_hub


@sock.route("/ws/echo", bp=bp)
@login_required
@websocket_handler
def echo(connection: Connection) -> None:
    """Send every message back unchanged: text as text, binary as binary."""
    while True:
        connection.send(connection.receive())


@sock.route("/ws/chat", bp=bp)
@login_required
@websocket_handler
def chat(connection: Connection) -> None:
    """Relay `{"text": ...}` from this client to every chat client."""
    hub = current_hub()
    unsubscribe = hub.subscribe(connection.deliver)
    user = current_user.email
    try:
        while True:
            try:
                text = parse_chat_message(connection.receive())
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
    except ValueError:
        raise InvalidChatMessage(f"not JSON; {expected}") from None
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        raise InvalidChatMessage(expected)
    text = message["text"].strip()
    if not text:
        raise InvalidChatMessage("text is empty")
    return text
