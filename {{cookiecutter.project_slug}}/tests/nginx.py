"""nginx in front of the test gunicorn, from the very files compose.yaml uses.

Self-contained (no import of conftest): the template's own tests load this
file on its own to render the config for gixy.

In a container, the official nginx image renders
deploy/nginx/templates/default.conf.template with envsubst and runs
deploy/nginx/nginx.conf. Here the same two files run on loopback with the
machine's nginx; the copy differs only in what a container has and a test
machine lacks: file paths, the worker user, the port, the app's address and
the static folder.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = PROJECT_ROOT / "deploy" / "nginx"
TEMPLATE = DEPLOY / "templates" / "default.conf.template"
STATIC = PROJECT_ROOT / "src" / "{{ cookiecutter.package_name }}" / "static"

# $NAME or ${NAME}: what envsubst replaces when NAME is in its list.
PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def find_nginx() -> str | None:
    """The nginx binary; Debian installs it in /usr/sbin, off a user's PATH."""
    return shutil.which("nginx") or shutil.which(
        "nginx", path="/usr/sbin:/usr/local/sbin"
    )


def envsubst(text: str, environ: dict[str, str]) -> str:
    """Replace the variables that are set and leave every other `$` alone,
    like the image's /docker-entrypoint.d/20-envsubst-on-templates.sh."""

    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return environ.get(name, match.group(0))

    return PLACEHOLDER.sub(substitute, text)


def compose_nginx_environment() -> dict[str, str]:
    """The nginx service's environment in compose.yaml, with the defaults it
    gives (`${NAME:-default}` counts as `default`)."""
    compose = (PROJECT_ROOT / "compose.yaml").read_text()
    service = re.search(r"^  nginx:\n(.*?)(?=^  \S|\Z)", compose, re.M | re.S)
    assert service, "compose.yaml has no nginx service"
    block = re.search(
        r"^    environment:\n((?:(?:      .*|\s*#.*)\n)+)", service.group(1), re.M
    )
    assert block, "the nginx service in compose.yaml has no environment"
    environ = {}
    entries = re.findall(r"^      ([A-Z_][A-Z0-9_]*): (.+)$", block.group(1), re.M)
    for name, value in entries:
        default = re.fullmatch(r"\$\{\w+:-(.*)\}", value.strip())
        environ[name] = default.group(1) if default else value.strip()
    return environ


def render_server_block(**variables: str) -> str:
    """default.conf as the image writes it from the template, with compose's
    environment for the nginx service, overridden by `variables`."""
    return envsubst(TEMPLATE.read_text(), {**compose_nginx_environment(), **variables})


def replace_once(text: str, pattern: str, replacement: str) -> str:
    """Replace the one match of a multi-line regex; fail loudly when the
    shipped config no longer has the line this module adjusts."""
    result, count = re.subn(pattern, lambda _: replacement, text, flags=re.M)
    if count != 1:
        raise AssertionError(f"expected one match of {pattern!r}, found {count}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mime_types_path(nginx: str) -> str | None:
    """mime.types beside the binary's own nginx.conf (`nginx -V`)."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    conf_path = re.search(r"--conf-path=(\S+)", built)
    if conf_path:
        path = Path(conf_path.group(1)).parent / "mime.types"
        if path.is_file():
            return str(path)
    return None


class Nginx:
    """nginx on a free loopback port, proxying to `upstreams` (host:port).

    `variables` override the template variables compose.yaml sets, e.g.
    `NGINX_WS_READ_TIMEOUT="3s"`.
    """

    def __init__(self, prefix: Path, upstreams: Sequence[str], **variables: str):
        self.binary = find_nginx()
        assert self.binary, "nginx is not installed"
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "logs" / "error.log"
        self.access_log = prefix / "logs" / "access.log"
        for folder in ("conf.d", "logs", "temp"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._main_config())
        (prefix / "conf.d" / "default.conf").write_text(
            self._server_block(upstreams, variables)
        )
        self.process: subprocess.Popen | None = None

    def _main_config(self) -> str:
        text = (DEPLOY / "nginx.conf").read_text()
        # Workers run as the image's "nginx" user there. Here root's workers
        # stay root so they can read the project, wherever it is; anyone
        # else's run as themselves (nginx ignores `user` then).
        user = "user root;" if os.geteuid() == 0 else ""
        text = replace_once(text, r"^user\s+[^;]+;", user)
        text = replace_once(text, r"^pid\s+[^;]+;", f"pid {self.prefix}/nginx.pid;")
        text = replace_once(
            text, r"^error_log\s+\S+", f"daemon off;\nerror_log {self.error_log}"
        )
        text = replace_once(text, r"access_log\s+\S+", f"access_log {self.access_log}")
        text = replace_once(
            text,
            r"include\s+/etc/nginx/conf\.d/\*\.conf;",
            f"include {self.prefix}/conf.d/*.conf;",
        )
        mime_types = mime_types_path(self.binary)
        if mime_types:
            text = replace_once(
                text, r"include\s+/etc/nginx/mime\.types;", f"include {mime_types};"
            )
        temp = self.prefix / "temp"
        temp_paths = "".join(
            f"\n    {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return replace_once(text, r"^http\s*\{", "http {" + temp_paths)

    def _server_block(self, upstreams: Sequence[str], variables: dict) -> str:
        text = render_server_block(NGINX_UPSTREAM=upstreams[0], **variables)
        text = replace_once(
            text,
            rf"^[ \t]*server\s+{re.escape(upstreams[0])};",
            "".join(f"    server {upstream};\n" for upstream in upstreams).rstrip(),
        )
        text = replace_once(
            text, r"^[ \t]*listen\s+80;", f"    listen 127.0.0.1:{self.port};"
        )
        return replace_once(text, r"alias\s+/srv/static/;", f"alias {STATIC}/;")

    def test_config(self) -> subprocess.CompletedProcess:
        """`nginx -t` on the rendered configuration."""
        return subprocess.run(
            [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self) -> "Nginx":
        checked = self.test_config()
        assert checked.returncode == 0, f"nginx -t failed:\n{checked.stderr}"
        self._output = (self.prefix / "logs" / "output.log").open("w")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(self.conf)],
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen in 10 s:\n{self.log()}")

    def log(self) -> str:
        """The error log (and anything nginx printed)."""
        parts = [self.prefix / "logs" / "output.log", self.error_log]
        return "".join(path.read_text() for path in parts if path.exists())

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            # SIGTERM: fast shutdown, without waiting for open sockets.
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self._output.close()
