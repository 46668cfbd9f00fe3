"""The reconnecting client of docs/websockets.md ("Stay connected"), its code
taken from the docs as a reader copies it, against real servers: it waits out
Retry-After when the worker is full, comes back after a reload's 1001, asks
for a new token when its token expired (again, should the new one expire
during a wait), and gives up on a 1008.

Its own log says what it decided and how long it waited; the server's log and
the messages it hears say what happened.
"""

import json
import re
import signal
import threading
import time
from contextlib import ExitStack

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus

from {{ cookiecutter.package_name }}.realtime.guards import RETRY_AFTER_SECONDS

from .conftest import (
    PASSWORD,
    PROJECT_ROOT,
    SMALL_WORKER,
    SMALL_WORKER_SOCKETS,
    Server,
    bearer_token,
    log_in,
    open_socket,
    submit_form,
    wait_until,
)

DOCS = PROJECT_ROOT / "docs" / "websockets.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
# What a reload, a restart and the client's waits may take together (its
# longest wait is 30 s); the tests end as soon as the client is back.
DEADLINE = 60
# The first ceiling after a 1001: 0.5 s * 2**3.
GOING_AWAY_CEILING = 4.0
TOKEN_MAX_AGE = 5
WRONG_PASSWORD = "not the password"  # noqa: S105 (wrong on purpose)


def client_code() -> dict:
    """The client's definitions, run from the docs' block; its demonstration
    (under `if __name__ == "__main__"`) does not run."""
    blocks = PYTHON_BLOCK.findall(DOCS.read_text())
    blocks = [code for code in blocks if "def chat_messages" in code]
    assert len(blocks) == 1, "docs/websockets.md no longer shows the client once"
    namespace = {"__name__": "chat_client"}
    # The docs' own code, as a reader would run it.
    exec(compile(blocks[0], str(DOCS), "exec"), namespace)  # noqa: S102
    return namespace


def ceiling(attempt: int) -> float:
    """The documented ceiling of the wait after `attempt` failed attempts."""
    return min(30.0, 0.5 * 2**attempt)


class Client:
    """The docs' `chat_messages()` in a thread, as `email` on `server`: it says
    hello on each connection and stops once it has heard `hellos` of its own."""

    def __init__(
        self, server: Server, email: str, hellos: int, password: str = PASSWORD
    ) -> None:
        self.code = client_code()
        self.code["base"] = server.url
        self.code["url"] = f"{server.ws_url}/ws/chat"
        self.code["credentials"] = (email, password)
        self.email = email
        self.hellos = hellos
        self.connected_at: list[float] = []  # time.time(), as log records have
        self.heard: list[dict] = []
        self.error: BaseException | None = None
        self.stopping = False
        self.ws = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _say_hello(self, ws) -> None:
        if self.stopping:
            ws.close()  # a 1000: the client stops
            return
        self.ws = ws
        self.connected_at.append(time.time())
        ws.send(json.dumps({"text": f"hello {len(self.connected_at)}"}))

    def _run(self) -> None:
        try:
            for message in self.code["chat_messages"](on_connect=self._say_hello):
                self.heard.append(message)
                if self.own_hellos() == self.hellos:
                    return
        except Exception as error:  # what the test looks at
            self.error = error

    def own_hellos(self) -> int:
        return sum(
            m.get("user") == self.email and m.get("text", "").startswith("hello")
            for m in self.heard
        )

    def wait(self, what: str) -> None:
        """Until the client has stopped, by itself."""
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"{what}: not within {DEADLINE} s"

    def stop(self) -> None:
        self.stopping = True
        if self.ws is not None:
            self.ws.close()
        self.thread.join(10)


@pytest.fixture
def start_client(caplog):
    caplog.set_level("INFO", logger="chat_client")
    started = []

    def start(server: Server, email: str, hellos: int, **options) -> Client:
        client = Client(server, email, hellos, **options)
        started.append(client)
        return client

    yield start
    for client in started:
        client.stop()


def client_log(caplog, client: Client, saying: str) -> list:
    """The client's log records whose message says `saying`; only this
    client's, should another test's have outlived it."""
    return [
        record
        for record in caplog.records
        if record.name == "chat_client"
        and record.thread == client.thread.ident
        and saying in record.msg
    ]


def retries(caplog, client: Client) -> list:
    """The client's "... connecting again" records: args (reason, delay)."""
    return client_log(caplog, client, "connecting again")


def handshakes(server: Server, status: int) -> int:
    """How many handshakes on /ws/chat the access log shows answered `status`."""
    return len(re.findall(rf'"GET /ws/chat HTTP/1\.\d" {status} ', server.log()))


def test_a_full_worker_is_tried_again_after_retry_after(
    start_server, start_client, alice, bob, caplog
):
    server = start_server(**SMALL_WORKER)
    with ExitStack() as stack:
        token = bearer_token(server, bob)
        for _ in range(SMALL_WORKER_SOCKETS):
            stack.enter_context(open_socket(server, "/ws/echo", token=token))
        client = start_client(server, alice, hellos=1)
        wait_until(lambda: handshakes(server, 503), DEADLINE, "a 503 for the client")
    # The worker has room again.
    client.wait("the client heard its hello")
    assert client.error is None
    assert client.own_hellos() == 1

    refusals = retries(caplog, client)
    assert len(refusals) == handshakes(server, 503) >= 1
    for attempt, record in enumerate(refusals):
        reason, delay = record.args
        assert reason == "refused with 503"
        assert RETRY_AFTER_SECONDS <= delay <= RETRY_AFTER_SECONDS + ceiling(attempt)
    # It did wait that long, after the last refusal.
    reason, delay = refusals[-1].args
    assert client.connected_at[0] - refusals[-1].created >= delay


def test_a_reload_closes_with_1001_and_the_client_comes_back(
    start_server, start_client, alice, caplog
):
    server = start_server()
    client = start_client(server, alice, hellos=2)
    wait_until(client.own_hellos, DEADLINE, "the client's first hello back")

    server.process.send_signal(signal.SIGHUP)  # new workers; the old ones leave
    client.wait("the client's second hello back")
    assert client.error is None
    assert client.own_hellos() == 2

    first, *_ = retries(caplog, client)
    reason, delay = first.args
    assert reason == "closed with 1001"
    assert 0 <= delay <= GOING_AWAY_CEILING


def handshake_status(server: Server, token: str) -> int:
    try:
        with open_socket(server, "/ws/echo", token=token):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


def test_an_expired_token_is_renewed_once_and_the_client_carries_on(
    start_server, start_client, make_user, caplog
):
    server = start_server(TOKEN_MAX_AGE=str(TOKEN_MAX_AGE))
    email = make_user()
    client = start_client(server, email, hellos=2)
    wait_until(client.own_hellos, DEADLINE, "the client's first hello back")
    # Issued after the client's: once it is refused, the client's is too.
    later_token = bearer_token(server, email)
    wait_until(
        lambda: handshake_status(server, later_token) == 401,
        TOKEN_MAX_AGE + DEADLINE,
        "the tokens expire",
        every=0.5,
    )

    server.process.send_signal(signal.SIGHUP)
    client.wait("the client's second hello back")
    assert client.error is None
    assert client.own_hellos() == 2
    # The test's own refused handshakes were on /ws/echo; these are the
    # client's. Usually one; a second when the renewed token met the old,
    # stopping worker (503) and expired during the wait that followed.
    renewals = client_log(caplog, client, "token refused")
    assert len(renewals) == handshakes(server, 401) >= 1


def test_a_token_that_expires_during_a_wait_is_renewed_again(
    start_server, start_client, make_user, caplog
):
    # A token outlives its first use, and dies during the wait after a 429.
    max_age = 3
    assert max_age < RETRY_AFTER_SECONDS
    server = start_server(TOKEN_MAX_AGE=str(max_age), WS_MAX_SOCKETS_PER_USER="1")
    email = make_user()
    with open_socket(server, "/ws/echo", token=bearer_token(server, email)):
        # Its first token: 429, then expired after the wait (401); its second,
        # fresh: 429 again, then expired after that wait too.
        client = start_client(server, email, hellos=1)
        wait_until(lambda: handshakes(server, 429) == 2, DEADLINE, "two 429s")
    client.wait("the client's hello back")
    assert client.error is None
    assert client.own_hellos() == 1
    assert handshakes(server, 429) == 2
    assert handshakes(server, 401) == 2
    assert len(client_log(caplog, client, "token refused")) == 2
    assert [record.args[0] for record in retries(caplog, client)] == [
        "refused with 429",
        "refused with 429",
    ]


def test_the_client_gives_up_when_its_user_logs_out(
    server, start_client, make_user, caplog
):
    email = make_user()
    client = start_client(server, email, hellos=2)
    wait_until(client.own_hellos, DEADLINE, "the client's first hello back")

    browser = log_in(server, email)
    logout = submit_form(
        browser, f"{server.url}/", {}, target=f"{server.url}/auth/logout"
    )
    assert logout.status_code == 302
    client.wait("the client gave up")
    assert isinstance(client.error, ConnectionClosed)
    assert (client.error.rcvd.code, client.error.rcvd.reason) == (
        1008,
        "credentials revoked",
    )
    assert retries(caplog, client) == []
    assert len(client.connected_at) == 1


def test_a_wrong_password_stops_the_client_at_once(server, start_client, alice):
    client = start_client(server, alice, hellos=1, password=WRONG_PASSWORD)
    client.wait("the client stopped")
    assert isinstance(client.error, requests.HTTPError)
    assert client.error.response.status_code == 401
    assert client.connected_at == []
