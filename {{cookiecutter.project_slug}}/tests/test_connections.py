"""One writer per socket, pinned without timing luck: a real race between the
hub's deliveries and a handler's replies is rare (test_chat.py provokes one),
so here a socket that takes its time to send counts the sends that overlap."""

import threading
import time

from {{ cookiecutter.package_name }}.realtime.connections import Connection


class SlowSocket:
    """Stands in for simple_websocket's socket: each send takes 5 ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sending = 0
        self.most_at_once = 0
        self.sent = 0

    def send(self, data) -> None:
        with self._lock:
            self.sending += 1
            self.most_at_once = max(self.most_at_once, self.sending)
        time.sleep(0.005)
        with self._lock:
            self.sending -= 1
            self.sent += 1

    def close(self, reason, message) -> None:
        self.send(b"")


def test_sends_from_many_threads_take_turns():
    socket = SlowSocket()
    connection = Connection(socket)
    writers = [
        threading.Thread(target=lambda: [connection.send("x") for _ in range(5)])
        for _ in range(8)
    ]
    closer = threading.Thread(target=connection.close, args=(1001, "going away"))
    for thread in [*writers, closer]:
        thread.start()
    for thread in [*writers, closer]:
        thread.join()
    assert socket.sent == 8 * 5 + 1
    assert socket.most_at_once == 1
