"""gunicorn's accept queue holds a deploy's reconnect storm (gevent only: a
gthread instance holds far fewer sockets than gunicorn's default queue)."""

import os
import re
import resource
import select
import signal
import socket
from collections import Counter
from pathlib import Path

from .conftest import require, wait_until, workers


def test_a_burst_of_connections_waits_in_the_queue_until_the_workers_take_it(
    start_server,
):
    """A deploy's reconnect storm: more connections at once than busy workers
    accept. The kernel queues as many as gunicorn's backlog, which
    gunicorn.conf.py makes room for every socket the instance holds; past
    the queue it would drop the client's handshake, and the client would
    wait a second or more for TCP to send it again. Here the workers are
    stopped while 2,600 connections arrive (gunicorn's default queue holds
    2,048): every one is queued, and each is answered once they resume."""
    burst = 2600
    settings = workers(2, 1500)  # room for 3,000 sockets
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    require(
        cap >= burst,
        f"net.core.somaxconn is {cap}, so the kernel queues fewer than {burst} "
        f"connections whatever gunicorn asks: sysctl -w net.core.somaxconn=4096",
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    require(hard >= burst + 512, f"{burst} sockets need more open files than {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, burst + 512), hard))
    server = start_server(**settings)
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    sockets: dict[int, socket.socket] = {}
    try:
        answers = queue_then_answer(server, sockets, burst, request)
    finally:
        for sock in sockets.values():
            sock.close()
    statuses = Counter(
        answer.split(b" ", 2)[1] if answer else b"closed unanswered"
        for answer in answers.values()
    )
    assert statuses == {b"200": burst}


def queue_then_answer(server, sockets: dict, burst: int, request: bytes) -> dict:
    """Open `burst` connections (into `sockets`) while the workers are
    stopped, wait until the kernel has queued each one, send `request` on
    each; then let the workers go on and wait for every answer."""
    stopped = server.worker_pids()
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(burst):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            sockets[sock.fileno()] = sock
        # A connection the kernel queued is established for the client; one
        # whose handshake was dropped is still waiting to be.
        poll = select.poll()
        for fd in sockets:
            poll.register(fd, select.POLLOUT)
        connected: set[int] = set()

        def all_queued() -> bool:
            for fd, _ in poll.poll(0):
                poll.unregister(fd)
                connected.add(fd)
            return len(connected) == burst

        wait_until(all_queued, 10, f"all {burst} connections queued")
        for sock in sockets.values():
            sock.sendall(request)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    # Once the workers run again, every queued request is answered.
    poll = select.poll()
    for fd in sockets:
        poll.register(fd, select.POLLIN)
    answers: dict[int, bytes] = dict.fromkeys(sockets, b"")
    waiting = set(sockets)

    def all_answered() -> bool:
        for fd, _ in poll.poll(0):
            data = sockets[fd].recv(65536)
            answers[fd] += data
            if whole_response(answers[fd]) or not data:
                poll.unregister(fd)
                waiting.discard(fd)
        return not waiting

    wait_until(all_answered, 60, "an answer to every queued request")
    return answers


def whole_response(data: bytes) -> bool:
    """Whether `data` holds an HTTP response's headers and its whole body."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    length = re.search(rb"^content-length:\s*(\d+)", head, re.I | re.M)
    return length is not None and len(body) >= int(length.group(1))
