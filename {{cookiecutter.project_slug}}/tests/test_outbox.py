"""The outbox of a socket, on real TCP sockets: a sender never waits for a
client that stops reading, and what it queued arrives whole and in order once
the client reads again. And `Flag`, the event it closes with (and, under
gthread, the one each handler waits on for its reader)."""

import socket
import struct
import threading

from {{ cookiecutter.package_name }}.realtime.outbox import Flag, Outbox

from .conftest import wait_until

FRAME_SIZE = 4096
SENDERS = 8
FRAMES_EACH = 500  # 8 x 500 x 4 KB: more than loopback's kernel buffers hold


def connected_pair() -> tuple[socket.socket, socket.socket]:
    """(the server's end, a client's end that reads into a small buffer)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
{%- if cookiecutter.worker_class == "gevent" %}
    # gunicorn's gevent worker hands the app gevent's sockets.
    import gevent.socket

    server = gevent.socket.socket(fileno=server.detach())
{%- endif %}
    return server, client


def frame(sender: int, number: int) -> bytes:
    header = struct.pack("!HH", sender, number)
    return header + bytes([sender]) * (FRAME_SIZE - len(header))


def fill(outbox: Outbox) -> int:
    """Send until the kernel's buffers are full and frames queue; how many."""
    number = 0
    while outbox.backlog == 0:
        assert number < 10_000, "the kernel took 40 MB without a pause"
        outbox.send(frame(0, number))
        number += 1
    for _ in range(10):  # a few more behind the first that waits
        outbox.send(frame(0, number))
        number += 1
    return number


def test_senders_never_wait_and_every_frame_arrives_whole_and_in_order():
    server, client = connected_pair()
    outbox = Outbox(server)

    def send_all(sender: int) -> None:
        for number in range(FRAMES_EACH):
            outbox.send(frame(sender, number))

    senders = [threading.Thread(target=send_all, args=(n,)) for n in range(SENDERS)]
    for thread in senders:
        thread.start()
    for thread in senders:
        # The client reads nothing yet: a send that waited for it would hang.
        thread.join(timeout=30)
        assert not thread.is_alive(), "a sender waited for the client"
    total = SENDERS * FRAMES_EACH * FRAME_SIZE
    assert 0 < outbox.backlog < total

    received = bytearray()
    while len(received) < total:
        received += client.recv(1 << 16)
    wait_until(lambda: outbox.backlog == 0, 30, "the backlog sent")
    next_number = [0] * SENDERS
    for offset in range(0, total, FRAME_SIZE):
        sender, number = struct.unpack_from("!HH", received, offset)
        assert received[offset : offset + FRAME_SIZE] == frame(sender, number)
        assert number == next_number[sender]
        next_number[sender] += 1
    assert next_number == [FRAMES_EACH] * SENDERS

    outbox.close()
    assert outbox.closed.wait(10)
    assert client.recv(1) == b""  # the connection is over
    # The socket is still the server's to close: gunicorn counts its
    # connections as it closes them, and a close that fails counts twice.
    assert server.fileno() != -1
    server.close()
    client.close()


def test_abort_frees_a_writer_waiting_for_a_client_that_never_reads():
    server, client = connected_pair()
    outbox = Outbox(server)
    fill(outbox)  # the writer now waits for room that never comes

    outbox.abort()
    assert outbox.backlog == 0
    outbox.close()  # what the socket's reader does once the abort wakes it
    assert outbox.closed.wait(10)
    writers = [t for t in threading.enumerate() if t.name.startswith("outbox")]
    wait_until(lambda: not any(t.is_alive() for t in writers), 30, "the writers ending")
    client.close()


def test_discarding_the_queue_keeps_the_frame_being_written_whole():
    server, client = connected_pair()
    outbox = Outbox(server)
    fill(outbox)
    outbox.discard_queue()
    outbox.send(b"last")
    outbox.close()

    received = bytearray()
    while chunk := client.recv(1 << 16):
        received += chunk
    assert received.endswith(b"last")
    body = received[: -len(b"last")]
    assert len(body) % FRAME_SIZE == 0
    for offset in range(0, len(body), FRAME_SIZE):
        _, number = struct.unpack_from("!HH", body, offset)
        assert body[offset : offset + FRAME_SIZE] == frame(0, number)
    assert outbox.closed.wait(10)
    client.close()


def read_until_end(client: socket.socket) -> bytes:
    received = b""
    client.settimeout(10)
    while chunk := client.recv(65536):
        received += chunk
    return received


def test_end_sending_ends_the_stream_after_what_was_sent():
    server, client = connected_pair()
    outbox = Outbox(server)
    outbox.send(b"goodbye")
    outbox.end_sending()
    # The frame, then the end of the stream, while the server still reads.
    assert read_until_end(client) == b"goodbye"
    client.sendall(b"answer")
    assert server.recv(16) == b"answer"
    server.close()
    client.close()


def test_end_sending_leaves_a_queue_that_waits_to_the_writer():
    server, client = connected_pair()
    outbox = Outbox(server)
    sent = fill(outbox)
    outbox.end_sending()
    # Nothing is cut: once the client reads, every frame arrives, then the
    # writer closes the socket when simple-websocket is done with it.
    outbox.close()
    received = read_until_end(client)
    assert received == b"".join(frame(0, n) for n in range(sent))
    assert outbox.closed.wait(10)
    client.close()


def test_a_flag_waits_until_set_and_clear_unsets_it():
    flag = Flag()
    assert not flag.is_set()
    assert not flag.wait(0.01)
    assert not flag.wait(-1)  # as threading.Event: no wait at all
    flag.set()
    flag.set()  # twice, as the reader and the writer may
    assert flag.is_set()
    assert flag.wait(0) and flag.wait(None) and flag.wait(0.01)
    flag.clear()
    flag.clear()
    assert not flag.is_set()
    assert not flag.wait(0.01)


def test_a_flag_wakes_its_waiter_for_every_message_it_is_set_for():
    """simple-websocket's pattern, between two real threads: the reader
    appends a message, then sets; the handler waits, clears, and looks again.
    However the two interleave, no message is left waiting."""
    messages = 20_000
    flag, received, arrived = Flag(), [], []

    def read() -> None:
        for number in range(messages):
            arrived.append(number)
            flag.set()

    reader = threading.Thread(target=read)
    reader.start()
    while len(received) < messages:
        while not arrived:
            assert flag.wait(10), f"woken for {len(received)} of {messages}"
            flag.clear()
        received.append(arrived.pop(0))
    reader.join(timeout=10)
    assert received == list(range(messages))


def test_a_flag_set_from_another_thread_ends_a_wait():
    flag = Flag()
    setter = threading.Timer(0.05, flag.set)
    setter.start()
    assert flag.wait(10)
    assert flag.is_set()
    setter.join()
{%- if cookiecutter.worker_class == "gthread" %}


def test_each_socket_of_the_app_waits_for_its_reader_on_a_flag(app):
    # simple-websocket makes every socket's event from this class.
    assert app.config["SOCK_SERVER_OPTIONS"]["event_class"] is Flag
{%- endif %}
