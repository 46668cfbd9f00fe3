"""A chat client that stops reading is closed with 1008; nobody else waits."""

import json
import re
import threading
import time

from .conftest import RawWebSocket, bearer_token, join_chat, open_socket

TEXT = "x" * 60_000  # a 60 KB message
# Enough to fill the kernel's buffers towards the slow client (a few MB on
# loopback) and then WS_SEND_QUEUE_LIMIT (1 MiB), several times over.
MOST_MESSAGES = 400
AFTER_THE_CLOSE = 20
# Bytes the workers may grow by while the flood lasts: the slow client's queue
# is bounded by WS_SEND_QUEUE_LIMIT, whatever the flood.
MEMORY_BOUND = 64 * 1024 * 1024
# The longest a message may take to reach the reader that keeps up. Were
# delivery held up by the slow client, it would stop until the slow client is
# closed, and since only a queue that fills up closes it, a delivery that waited
# on it would never come. What the reader does see is the scheduling of a busy
# machine: a second or more on a loaded 2-core CI runner, not the stall.
NOBODY_WAITS = 5.0


def test_a_chat_client_that_stops_reading_is_closed_and_delays_no_one(
    start_server, alice, bob
):
    # The flood is one sender's: let it past the per-socket message rate.
    server = start_server(WS_MAX_MESSAGES_PER_SECOND="1000")
    slow_closed = "closing the WebSocket of bob@example.com with 1008"
    sent_at: dict[int, float] = {}
    arrived_at: dict[int, float] = {}

    with (
        open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as sender,
        # It reads in a thread of its own: a client that keeps up.
        open_socket(server, "/ws/chat", token=bearer_token(server, alice)) as listener,
    ):
        # A slow client: a 4 KB receive buffer, and it reads nothing at all.
        slow = RawWebSocket(
            server, "/ws/chat", bearer_token(server, bob), receive_buffer=4096
        )
        assert slow.status == 101
        join_chat(sender, listener)
        # Once its own message comes back to the others, it is subscribed.
        slow.send_frame(RawWebSocket.TEXT, json.dumps({"text": "slow joined"}).encode())
        while json.loads(listener.recv(timeout=10))["text"] != "slow joined":
            pass
        memory_before = server.workers_memory()

        def listen() -> None:
            while True:
                message = json.loads(listener.recv(timeout=30))
                number, _, _ = message["text"].partition(" ")
                if number == "done":
                    return
                arrived_at[int(number)] = time.monotonic()

        def drain_own_copies() -> None:
            while json.loads(sender.recv(timeout=30))["text"] != "done":
                pass

        readers = [
            threading.Thread(target=listen),
            threading.Thread(target=drain_own_copies),
        ]
        for reader in readers:
            reader.start()

        # 50 messages a second (3 MB/s) until the slow client is closed, then
        # some more to see that delivery goes on.
        number, closed_at = 0, None
        while closed_at is None or number < closed_at + AFTER_THE_CLOSE:
            assert number < MOST_MESSAGES, "the slow client was never closed"
            sent_at[number] = time.monotonic()
            sender.send(json.dumps({"text": f"{number} {TEXT}"}))
            number += 1
            time.sleep(0.02)
            if closed_at is None and number % 5 == 0 and slow_closed in server.log():
                closed_at = number
        sender.send(json.dumps({"text": "done"}))
        for reader in readers:
            reader.join(timeout=60)
        memory_after = server.workers_memory()

    print(f"closed after {closed_at} messages of {number}")
    assert sorted(arrived_at) == list(range(number))
    slowest = max(arrived_at[n] - sent_at[n] for n in range(number))
    assert slowest < NOBODY_WAITS, f"a message took {slowest:.2f} s to reach a reader"
    assert memory_after - memory_before < MEMORY_BOUND

    # The slow client gets what reached its buffers, then 1008.
    messages, code = slow.messages_until_close()
    assert code == 1008
    received = [json.loads(m)["text"].partition(" ")[0] for m in messages]
    numbers = [int(n) for n in received if n.isdigit()]
    assert numbers == sorted(numbers)
    assert 0 < len(numbers) < number
    slow.close()
    log = server.log()
    assert (
        "closing the WebSocket of bob@example.com with 1008: " in log
        and "bytes behind, more than WS_SEND_QUEUE_LIMIT (1048576)" in log
    )
    assert "Traceback" not in log
    # Written by the thread that delivered the chat, not by bob's own, the
    # line still names the request of bob's socket.
    opened = re.search(rf"opened by {re.escape(bob)} from \S+ \[request (\w+)\]", log)
    too_slow = re.search(r"with 1008: .* \[request (\w+)\]$", log, re.M)
    assert opened and too_slow, log
    assert too_slow.group(1) == opened.group(1)

    # Its place is given back: bob may chat again.
    with open_socket(server, "/ws/chat", token=bearer_token(server, bob)) as again:
        join_chat(again)
