"""gunicorn settings: the one place that sets workers, threads and timeouts.

Every value comes from the environment through `{{ cookiecutter.package_name }}.config`;
a `--bind` or other flag on the command line wins over this file.
https://docs.gunicorn.org/en/stable/settings.html
"""

import logging
import os
import shutil
import signal
import sys
import tempfile
{%- if cookiecutter.worker_class == "gthread" %}
import threading
{%- endif %}
import time
from pathlib import Path

{% if cookiecutter.worker_class == "gevent" -%}
import gevent
{% endif -%}
from gunicorn import sock as gunicorn_sockets
from gunicorn.glogging import Logger

from {{ cookiecutter.package_name }} import logs
from {{ cookiecutter.package_name }}.config import ConfigError, Settings

# The log format first, so that every line is written in it: what reading the
# settings says (a missing SECRET_KEY), gunicorn's startup, the app, libraries.
log_format = Settings.log_format_from_env()
logs.configure_process(log_format)
# Stops here, with one line, when a setting is missing or wrong (SECRET_KEY...).
try:
    settings = Settings.from_env()
except ConfigError as error:
    if log_format != "json":
        raise
    logging.getLogger("gunicorn.error").critical(error.message)
    raise SystemExit(1) from None
# Without SECRET_KEY (outside production) the settings hold a random key: hand
# it to the workers, or each would sign cookies and tokens with its own.
os.environ.setdefault("SECRET_KEY", settings.SECRET_KEY)

# https://docs.gunicorn.org/en/stable/settings.html#wsgi-app
wsgi_app = "{{ cookiecutter.package_name }}:create_app()"

# Loopback unless HOST says otherwise: gunicorn is not built to face the
# internet (slow clients hold its workers), so nginx stands in front and only
# a container, where nginx reaches the app over its own network, sets
# HOST=0.0.0.0. https://docs.gunicorn.org/en/stable/settings.html#bind
host = f"[{settings.HOST}]" if ":" in settings.HOST else settings.HOST
bind = [f"{host}:{settings.PORT}"]

# https://docs.gunicorn.org/en/stable/settings.html#workers
workers = settings.WEB_CONCURRENCY
{%- if cookiecutter.worker_class == "gthread" %}

# Threads, because an open WebSocket keeps its request running for as long as
# it lives: each socket holds one pool thread (and a reader thread of its
# own), so a worker holds at most `threads` sockets and HTTP requests together.
# https://docs.gunicorn.org/en/stable/settings.html#threads
worker_class = "gthread"
threads = settings.GUNICORN_THREADS
{%- else %}

# Greenlets: an open socket costs a few tens of KB instead of two OS threads,
# so one worker holds thousands. Install with `gunicorn[gevent]`.
# https://docs.gunicorn.org/en/stable/design.html#async-workers
worker_class = "gevent"
# https://docs.gunicorn.org/en/stable/settings.html#worker-connections
worker_connections = settings.GUNICORN_WORKER_CONNECTIONS
# By default gevent records, for debugging tools, where every greenlet was
# spawned: the greenlet that spawned it and up to ten frames of its stack. An
# open socket has two greenlets (its request's and its reader's), so that
# record cost 2.3 KB per socket (measured in the template's benchmarks); no
# code here reads it. The workers, forked from this process, inherit this.
# https://www.gevent.org/configuration.html (track_greenlet_tree)
gevent.config.track_greenlet_tree = False
# The kernel's queue of connections that no worker has accepted yet. A
# deploy's reconnect storm brings every client of the old gunicorn back at
# once, more handshakes in a second than busy workers accept. When the queue
# is full the kernel drops the client's next handshake packet (`nstat`
# counts them as TcpExtListenOverflows) and the client waits for TCP to send
# it again, 1 s later, then 3 s, 7 s..., while the workers may sit idle: room
# for every socket this instance holds. gunicorn's default is 2048; the
# kernel caps it at net.core.somaxconn (4096 unless raised; compose.yaml
# raises it for the app, and docs/capacity.md says how on a host).
# https://docs.gunicorn.org/en/stable/settings.html#backlog
backlog = max(2048, workers * worker_connections)
{%- endif %}

# The worker's heartbeat to the master, not a limit on a request's length:
# a socket may stay open for hours. 30 s is gunicorn's default.
# https://docs.gunicorn.org/en/stable/settings.html#timeout
timeout = 30

# How long a stopping worker waits for open requests before it drops them.
# Sockets do not wait for it: `post_worker_init` below closes them at once.
# https://docs.gunicorn.org/en/stable/settings.html#graceful-timeout
graceful_timeout = 30

# Longer than gunicorn's 2 s so a proxy's idle upstream connections are
# reused rather than closed under it.
# https://docs.gunicorn.org/en/stable/settings.html#keepalive
keepalive = 5

# The control socket (gunicornc) lives at one path per user, so several
# gunicorns on one host (instances side by side, the test suite) would fight
# over it; nothing here uses it.
# https://docs.gunicorn.org/en/stable/settings.html#control-socket-disable
control_socket_disable = True

# Both logs to stdout/stderr: the container runtime collects them.
# https://docs.gunicorn.org/en/stable/settings.html#accesslog
accesslog = "-"
errorlog = "-"


class ServiceLogger(Logger):
    """gunicorn's logs in LOG_FORMAT (logs.py): its error log, which the app's
    lines share, and its access log. The root logger, where libraries' lines
    go, writes through the error log too."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(logs.formatter(settings.LOG_FORMAT))
        if settings.LOG_FORMAT == "json":
            for handler in self.access_log.handlers:
                handler.setFormatter(logs.JsonFormatter())
        logging.getLogger().handlers = list(self.error_log.handlers)


# https://docs.gunicorn.org/en/stable/settings.html#logger-class
logger_class = ServiceLogger
# Apache's combined format, then the request id (logs.py); with json, the
# access line's fields come from the same values.
# https://docs.gunicorn.org/en/stable/settings.html#access-log-format
access_log_format = logs.ACCESS_TEXT_FORMAT

# Peers whose X-Forwarded-Proto sets the request's scheme: none unless the app
# is behind a proxy (TRUSTED_PROXY_COUNT), then FORWARDED_ALLOW_IPS. The app's
# ProxyFix (proxy.py) believes X-Forwarded-For and -Host from the same peers.
# https://docs.gunicorn.org/en/stable/settings.html#forwarded-allow-ips
forwarded_allow_ips = (
    ",".join(settings.FORWARDED_ALLOW_IPS) if settings.TRUSTED_PROXY_COUNT else ""
)


# https://docs.gunicorn.org/en/stable/settings.html#on-starting
def on_starting(server):
    """In the master, before the first worker starts."""
    listen_with_reuse_port(server)
    prepare_metrics_folder(server)
{%- if cookiecutter.broadcast == "memory" %}
    if server.cfg.workers > 1:
        server.log.warning(
            "broadcast = memory with %d workers: a chat message reaches only the "
            "clients of the worker that received it; run one worker, or generate "
            "the project with broadcast = redis",
            server.cfg.workers,
        )
{%- endif %}


def listen_with_reuse_port(server):
    """Listen with SO_REUSEPORT, so that a new gunicorn can listen on the same
    address while this one still does: a deploy starts the new one first and
    stops the old one once the new one's workers are ready
    (docs/production.md, "Restarts and deploys"), and the clients the old one
    closes with 1001 come back to workers already running instead of waiting
    for them to boot. The kernel spreads new connections over every socket
    listening on the address; once the old one's is closed, all go to the new.

    gunicorn's own `reuse_port` setting would give each worker a socket of its
    own instead of the master's one, each with its own queue: the master
    binds its sockets here, with gunicorn's code and that setting on just for
    this, and its workers share them as usual. Not when the sockets are handed
    down (a re-exec after SIGUSR2, systemd's socket activation). The price: a
    second gunicorn started on the same port by mistake shares it instead of
    failing with "Address already in use".
    https://docs.gunicorn.org/en/stable/settings.html#reuse-port"""
    if server.LISTENERS or server.master_pid or os.environ.get("LISTEN_FDS"):
        return
    server.cfg.set("reuse_port", True)
    try:
        server.LISTENERS = gunicorn_sockets.create_sockets(server.cfg, server.log)
    finally:
        server.cfg.set("reuse_port", False)


def prepare_metrics_folder(server):
    """/metrics adds up every worker's values: prometheus-client, in its
    multiprocess mode, keeps each worker's in files of one folder
    (src/{{ cookiecutter.package_name }}/metrics.py). Create it, empty it of an earlier run's, and
    name it in PROMETHEUS_MULTIPROC_DIR for the workers: prometheus-client
    chooses that mode from this variable when a worker first imports it.
    https://prometheus.github.io/client_python/multiprocess/"""
    if settings.PROMETHEUS_MULTIPROC_DIR:
        folder = Path(settings.PROMETHEUS_MULTIPROC_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    else:
        # One of its own, so that several gunicorns on one host (instances
        # side by side, the test suite) never mix their counts. Remembered on
        # the master itself: a reload (SIGHUP) reads this file and the
        # settings again, and then finds the variable set.
        folder = Path(tempfile.mkdtemp(prefix="{{ cookiecutter.package_name }}-metrics-"))
        server.metrics_folder_made = folder
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


# https://docs.gunicorn.org/en/stable/settings.html#on-exit
def on_exit(server):
    """The folder made at start for the metrics goes with the master."""
    if folder := getattr(server, "metrics_folder_made", None):
        shutil.rmtree(folder, ignore_errors=True)


# https://docs.gunicorn.org/en/stable/settings.html#child-exit
def child_exit(server, worker):
    """A worker that exited (or crashed) holds no sockets any more."""
    # Its share of the gauges of open sockets and capacity stops counting;
    # its counters still count, as Prometheus expects of a counter.
    # Imported here: in the master, only once the folder is chosen.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
{%- if cookiecutter.broadcast == "redis" %}
    # Nor against WS_MAX_SOCKETS_PER_USER, at once.
    from {{ cookiecutter.package_name }}.realtime.redis_user_sockets import forget_worker

    try:
        forget_worker(settings.REDIS_URL, worker.pid)
    except Exception as error:  # Redis down: its count expires on its own
        server.log.warning("could not forget worker %s in Redis: %s", worker.pid, error)
{%- endif %}


# https://docs.gunicorn.org/en/stable/settings.html#post-fork
def post_fork(server, worker):
    """A stop while the worker boots: leave at once, until `post_worker_init`
    below sets the handlers of a booted worker. The worker holds nothing yet,
    and the master's SIGQUIT that follows a Ctrl-C would cut into a slower
    exit.

    Until gunicorn sets the worker's own handlers, the worker has the
    master's, which only queue the signal for a master that is not there: the
    stop would be lost, and gunicorn would wait `graceful_timeout` before it
    kills the worker. gunicorn sets its own before it loads the app, and its
    Ctrl-C handler then raises SystemExit wherever the import is: inside
    `threading` (a library starting a thread), that fails the boot ("Worker
    failed to boot", exit code 3). So these stay until the app is loaded."""

    def stop_while_booting(signum, frame):
        os._exit(0)

    def exit_while_booting():
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, stop_while_booting)

    init_signals = worker.init_signals

    def init_signals_then_exit_while_booting():
        init_signals()
        exit_while_booting()

    exit_while_booting()
    worker.init_signals = init_signals_then_exit_while_booting


# https://docs.gunicorn.org/en/stable/settings.html#post-worker-init
def post_worker_init(worker):
    """Close every open socket with 1001 "going away" when the worker is told
    to stop, so clients reconnect at once.

    SIGTERM (a shutdown, or a restart during a deploy): left alone, gunicorn
    would wait `graceful_timeout` for the sockets and then drop them without a
    close frame. SIGINT and SIGQUIT (Ctrl-C, a fast stop) reach `worker_int`
    below, which closes them."""
    stop = worker.handle_exit
    quit_now = worker.handle_quit
{%- if cookiecutter.broadcast == "redis" %}
    # Subscribe to the chat channel now rather than at the first chat socket,
    # so that every worker hears every message from the start.
    if hub := app_extensions(worker).get("chat_hub"):
        hub.start()
{%- endif %}

    def close_sockets_then_stop(signum, frame):
        close_open_sockets(worker)
        stop(signum, frame)

    def quit_once(signum, frame):
        # Ctrl-C in a terminal signals every process of the group: this worker
        # gets SIGINT, and SIGQUIT from the master a moment later. A second
        # exit would cut into the first, with a traceback.
        if not getattr(worker, "quitting", False):
            worker.quitting = True
            quit_now(signum, frame)

    signal.signal(signal.SIGTERM, close_sockets_then_stop)
    signal.signal(signal.SIGINT, quit_once)
    signal.signal(signal.SIGQUIT, quit_once)
    # What a deploy waits for, per worker, before it stops the old gunicorn.
    worker.log.info("Worker ready (pid: %s)", worker.pid)


# https://docs.gunicorn.org/en/stable/settings.html#worker-int
def worker_int(worker):
{%- if cookiecutter.worker_class == "gevent" %}
    """The worker quits at once: SIGINT, SIGQUIT, or `--reload` after a code
    change. Close every socket with 1001 first, so clients reconnect at once;
    left alone, they would be dropped without a close frame."""
    # This runs in a greenlet, not in the hub, so it may close the sockets
    # itself. Closing yields to other greenlets, and the worker's run loop,
    # which sees the quit too, may end meanwhile: once the worker is on its
    # way out (worker_exit below), a second exit from here would be reported
    # with a SystemExit traceback, so this greenlet waits for the end instead.
    # Otherwise it exits at once, rather than after gunicorn's 0.1 s pause,
    # during which the same could happen.
    if open_connections := app_extensions(worker).get("open_connections"):
        open_connections.close_all()
    if getattr(worker, "exiting", False):
        gevent.sleep(worker.cfg.graceful_timeout)
    sys.exit(0)


{%- else %}
    """The worker quits at once: SIGINT, SIGQUIT, or `--reload` after a code
    change. Python's exit then waits for every request in progress, and a
    WebSocket's request lasts until the socket closes: close them with 1001
    first, or the worker hangs until the master kills it after
    `graceful_timeout` ("Worker was sent SIGKILL!")."""
    close_open_sockets(worker)
{%- endif %}


# https://docs.gunicorn.org/en/stable/settings.html#worker-exit
def worker_exit(server, worker):
    """The worker's last step, in its own process, as it leaves."""
{%- if cookiecutter.worker_class == "gevent" %}
    # The main greenlet is leaving, with nothing left to yield to before the
    # process ends: see worker_int.
    worker.exiting = True
{%- endif %}
    # After a graceful stop (SIGTERM: a shutdown, a restart, a deploy) the
    # worker has waited for its requests and its sockets are closed. What is
    # left is Python's teardown of every module and object: a quarter of a
    # second of CPU, more with thousands of sockets' objects, taken from the
    # workers that replace this one. Skip it. Not after a quit (Ctrl-C,
    # SIGQUIT): there Python's exit is what waits for the sockets' close.
    if getattr(worker, "quitting", False):
        return
    leaving = sys.exc_info()[1]  # what gunicorn's `finally` is propagating
    if isinstance(leaving, SystemExit) and leaving.code in (0, None):
        logging.shutdown()  # every log line written out
        os._exit(0)


def close_open_sockets(worker):
    open_connections = app_extensions(worker).get("open_connections")
    if open_connections is None:
        return

    def close_all():
        started = time.monotonic()
        closed = open_connections.close_all()
        if closed:
            worker.log.info(
                "Sent 1001 to %d WebSockets in %.2f s",
                closed,
                time.monotonic() - started,
            )
{% if cookiecutter.worker_class == "gevent" %}
    # Called from the SIGTERM handler, which runs in gevent's hub; the hub must
    # not wait (starting a thread waits: BlockingSwitchOutError, exit code 255),
    # so a greenlet closes the sockets, as gunicorn's own gevent handlers do.
    gevent.spawn(close_all)
{%- else %}
    # Called from signal handlers. Closing takes locks that a handler may
    # hold; a signal handler must not wait for them, so a thread closes the
    # sockets.
    threading.Thread(target=close_all, daemon=True).start()
{%- endif %}


def app_extensions(worker) -> dict:
    # Under --reload, an app that fails to import (a syntax error) is replaced
    # by gunicorn's error page, which has no extensions and no sockets; a
    # worker stopped while it boots has no app yet.
    return getattr(getattr(worker, "wsgi", None), "extensions", {})
