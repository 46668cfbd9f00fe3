"""The baseline: Flask-Sock as its own tutorial shows it, nothing added.

No login, no Origin check, no capacity guard, no proxy. The benchmarks run it
under the same gunicorn settings as the generated service, and every figure in
BENCHMARKS.md is a ratio to this app's.

`/echo` is the tutorial's route, as written there; it is also served at
`/ws/echo`, where the generated nginx configuration proxies WebSockets, so
that the benchmarks can put that nginx in front of the baseline too and tell
what nginx alone costs on the same machine. `/chat` is the obvious way
to add broadcast across workers to it: each socket subscribes to a Redis
channel of its own connection, and what a client sends is published.
https://flask-sock.readthedocs.io/en/latest/quickstart.html
"""

import os
import threading

import redis
from flask import Flask
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)
# redis-py's pool stops at 100 connections by default (MaxConnectionsError, and
# Flask's error page written onto the open socket); a subscription per socket
# needs one connection each.
redis_client = redis.Redis.from_url(
    os.environ.get("REDIS_URL", "redis://127.0.0.1"), max_connections=20000
)


@sock.route("/echo")
def echo(ws):
    while True:
        data = ws.receive()
        ws.send(data)


# The same view under the path the generated nginx proxies as a WebSocket
# (Flask-Sock's decorator returns None: the view is the app's).
app.add_url_rule(
    "/ws/echo", "echo_behind_nginx", app.view_functions["echo"], websocket=True
)


@sock.route("/chat")
def chat(ws):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("chat")

    def forward():
        for message in pubsub.listen():
            ws.send(message["data"].decode())

    threading.Thread(target=forward, daemon=True).start()
    try:
        while True:
            redis_client.publish("chat", ws.receive())
    finally:
        pubsub.close()
