"""The figures the generated service counts itself, read from its GET /metrics.

    python benchmarks/service_metrics.py http://127.0.0.1:8000/metrics

prints them as JSON. benchmarks/loadtest.py and benchmarks/fanout.py read
them with `--metrics-url`, once before they measure and once after, and
report what changed. Ask gunicorn itself: the generated nginx refuses
/metrics. Every figure is the sum over the workers (prometheus-client's
multiprocess mode in the service), so there is none per worker.

What they give that the client cannot see, or only by guessing:

- `capacity`: the sockets the workers admit together (websocket_capacity),
  instead of working it out from the threads or worker_connections;
- `connections`: the sockets the service holds, by route
  (websocket_connections), as the app counts them;
- `handshakes`: every handshake by outcome (websocket_handshakes_total): a 503
  the client saw is `over_capacity` or `unavailable` here;
- `chat_delivery`: the chat's own delivery time, from a message's
  publication to its write on each socket (chat_delivery_seconds), without
  the client's share (its send, nginx, its reading of 1,000 sockets).

Run it with a bake's python: prometheus-client, whose parser reads the text,
is one of the service's dependencies.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

OUTCOMES = (
    "accepted",
    "unauthenticated",
    "forbidden_origin",
    "over_user_limit",
    "over_capacity",
    "unavailable",
)


def read(url: str, timeout: float = 10) -> dict:
    """The service's figures at this moment."""
    # The URL is the caller's http:// one, never file: or another scheme.
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
        text = response.read().decode()
    figures = {
        "capacity": 0.0,
        "connections": {},
        "handshakes": dict.fromkeys(OUTCOMES, 0.0),
        "chat_delivery": {"count": 0.0, "sum": 0.0, "buckets": {}},
    }
    delivery = figures["chat_delivery"]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "websocket_capacity":
                figures["capacity"] = value
            elif name == "websocket_connections":
                figures["connections"][labels["route"]] = value
            elif name == "websocket_handshakes_total":
                figures["handshakes"][labels["outcome"]] = value
            elif name == "chat_delivery_seconds_count":
                delivery["count"] = value
            elif name == "chat_delivery_seconds_sum":
                delivery["sum"] = value
            elif name == "chat_delivery_seconds_bucket":
                delivery["buckets"][labels["le"]] = value
    return figures


def change(before: dict, after: dict) -> dict:
    """The gauges as `after` has them; the counters' growth since `before`."""
    was, now = before["chat_delivery"], after["chat_delivery"]
    return {
        "capacity": after["capacity"],
        "connections": after["connections"],
        "handshakes": {
            outcome: count - before["handshakes"].get(outcome, 0.0)
            for outcome, count in after["handshakes"].items()
        },
        "chat_delivery": {
            "count": now["count"] - was["count"],
            "sum": now["sum"] - was["sum"],
            "buckets": {
                bound: count - was["buckets"].get(bound, 0.0)
                for bound, count in now["buckets"].items()
            },
        },
    }


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit("usage: service_metrics.py http://HOST:PORT/metrics")
    print(json.dumps(read(sys.argv[1]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
