"""nginx in front of the test gunicorn, from the very files its image holds.

It imports no more of the tests than tests/processes.py, not conftest: the
template's own tests load it to render the config for gixy.

In a container, nginx runs the image that the Dockerfile's nginx stage builds:
the official nginx image with deploy/nginx/nginx.conf, deploy/nginx/templates/
(rendered with envsubst when it starts) and the package's static folder copied
in. Here the files that stage copies run on loopback with the machine's nginx,
found from its COPY lines; the copy differs only in what a container has and a
test machine lacks: file paths, the worker user, the ports, the app's address,
the static folder and the certificate folder.

With `certs` (a folder holding fullchain.pem and privkey.pem, as compose.yaml
mounts deploy/nginx/certs) nginx runs as shipped: plain HTTP redirects to
HTTPS, which serves the app. Without, it runs the variant docs/production.md
gives for a load balancer in front that ends TLS: no HTTPS server, and plain
HTTP serves the app instead of redirecting.
"""

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .processes import (
    free_port,
    free_ports,
    port_open,
    stop_process,
    wait_until_started,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
# Where the image keeps what the Dockerfile's nginx stage copies into it.
IMAGE_MAIN_CONFIG = "/etc/nginx/nginx.conf"
IMAGE_TEMPLATES = "/etc/nginx/templates"
IMAGE_STATIC = "/srv/static"
# What the image renders, and where: each template, less this suffix, under
# conf.d, sub-folders kept. The server blocks include files from there.
TEMPLATE_SUFFIX = ".template"
CONF_D = "/etc/nginx/conf.d/"
# Where compose.yaml mounts the certificate pair and certbot's webroot.
CERTS = "/etc/nginx/certs/"
ACME_WEBROOT = "/var/www/acme"

# $NAME or ${NAME}: what envsubst replaces when NAME is in its list.
PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def nginx_image_copies() -> dict[str, Path]:
    """{path in the nginx image: what of the project is copied there}, from
    the COPY lines of the Dockerfile's nginx stage."""
    stages = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)
    stage = [text for text in stages if re.match(r"\S+ AS nginx\n", text)]
    assert len(stage) == 1, "the Dockerfile has no one stage named nginx"
    copies = re.findall(r"^COPY (\S+) (\S+)$", stage[0], re.M)
    return {target.rstrip("/"): PROJECT_ROOT / source for source, target in copies}


def copied_to(image_path: str) -> Path:
    """The file or folder of the project that the nginx image holds at
    `image_path`."""
    copies = nginx_image_copies()
    assert image_path in copies, f"the nginx stage copies nothing to {image_path}"
    return copies[image_path]


MAIN_CONFIG = copied_to(IMAGE_MAIN_CONFIG)
TEMPLATES = copied_to(IMAGE_TEMPLATES)
STATIC = copied_to(IMAGE_STATIC)


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


def compose_service(name: str) -> str:
    """The text of one service of compose.yaml."""
    compose = (PROJECT_ROOT / "compose.yaml").read_text()
    service = re.search(rf"^  {name}:\n(.*?)(?=^  \S|^\S|\Z)", compose, re.M | re.S)
    assert service, f"compose.yaml has no {name} service"
    return service.group(1)


def compose_nginx_environment() -> dict[str, str]:
    """The nginx service's environment in compose.yaml, with the defaults it
    gives (`${NAME:-default}` counts as `default`, wherever in the value)."""
    block = re.search(
        r"^    environment:\n((?:(?:      .*|\s*#.*)\n)+)",
        compose_service("nginx"),
        re.M,
    )
    assert block, "the nginx service in compose.yaml has no environment"
    environ = {}
    entries = re.findall(r"^      ([A-Z_][A-Z0-9_]*): (.+)$", block.group(1), re.M)
    for name, value in entries:
        environ[name] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value.strip())
    return environ


def render_templates(**variables: str) -> dict[str, str]:
    """{path under conf.d: text} of every file the image renders from
    deploy/nginx/templates, with compose's environment for the nginx service,
    overridden by `variables`."""
    environ = {**compose_nginx_environment(), **variables}
    return {
        path.relative_to(TEMPLATES).as_posix().removesuffix(TEMPLATE_SUFFIX): (
            envsubst(path.read_text(), environ)
        )
        for path in sorted(TEMPLATES.rglob(f"*{TEMPLATE_SUFFIX}"))
    }


def render_server_block(**variables: str) -> str:
    """default.conf as the image writes it from the template."""
    return render_templates(**variables)["default.conf"]


def write_certificates(ca, folder: Path) -> Path:
    """fullchain.pem and privkey.pem for 127.0.0.1 and localhost, issued by
    `ca` (a trustme.CA), in `folder`: a stand-in for deploy/nginx/certs."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    folder.mkdir(parents=True, exist_ok=True)
    chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    (folder / "fullchain.pem").write_bytes(chain)
    issued.private_key_pem.write_to_path(str(folder / "privkey.pem"))
    return folder


def replace_once(text: str, pattern: str, replacement: str) -> str:
    """Replace the one match of a multi-line regex; fail loudly when the
    shipped config no longer has the line this module adjusts."""
    result, count = re.subn(pattern, lambda _: replacement, text, flags=re.M)
    if count != 1:
        raise AssertionError(f"expected one match of {pattern!r}, found {count}")
    return result


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
    """nginx on free loopback ports, proxying to `upstreams` (host:port).

    `url` and `ws_url` reach the app: over HTTPS when `certs` is given (then
    `http_url` is the plain HTTP server that redirects), else over plain HTTP.
    `variables` override the template variables compose.yaml sets, e.g.
    `NGINX_WS_READ_TIMEOUT="3s"`. conftest's start_nginx passes `certs` on.
    """

    def __init__(
        self,
        prefix: Path,
        upstreams: Sequence[str],
        certs: Path | None = None,
        **variables: str,
    ):
        self.binary = find_nginx()
        assert self.binary, "nginx is not installed"
        self.prefix = prefix
        self.certs = certs
        if certs:
            self.port, self.tls_port = free_ports(2)
        else:
            self.port, self.tls_port = free_port(), None
        self.http_url = f"http://127.0.0.1:{self.port}"
        if certs:
            self.url = f"https://127.0.0.1:{self.tls_port}"
            self.ws_url = f"wss://127.0.0.1:{self.tls_port}"
        else:
            self.url = self.http_url
            self.ws_url = f"ws://127.0.0.1:{self.port}"
        # certbot's webroot: a file under .well-known/acme-challenge/ in it
        # is served over plain HTTP.
        self.acme_webroot = prefix / "acme"
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "logs" / "error.log"
        self.access_log = prefix / "logs" / "access.log"
        for folder in ("conf.d", "logs", "temp", "acme"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._main_config())
        if certs:
            # The port a browser reaches HTTPS on, as compose.yaml sets it.
            variables = {"NGINX_HTTPS_PORT": str(self.tls_port), **variables}
        rendered = render_templates(NGINX_UPSTREAM=upstreams[0], **variables)
        for name, text in rendered.items():
            text = self._adjust(name, text, upstreams)
            path = prefix / "conf.d" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.process: subprocess.Popen | None = None

    def _main_config(self) -> str:
        text = MAIN_CONFIG.read_text()
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

    def _adjust(self, name: str, text: str, upstreams: Sequence[str]) -> str:
        """One rendered file, made to run here."""
        text = text.replace(CONF_D, f"{self.prefix}/conf.d/")
        if name == "app/locations.conf":
            return replace_once(text, rf"alias\s+{IMAGE_STATIC}/;", f"alias {STATIC}/;")
        if name != "default.conf":
            return text
        text = replace_once(
            text,
            rf"^[ \t]*server\s+{re.escape(upstreams[0])};",
            "".join(f"    server {upstream};\n" for upstream in upstreams).rstrip(),
        )
        # The address only: the listen parameters (backlog) stay.
        text = replace_once(
            text, r"^[ \t]*listen\s+80(?=[\s;])", f"    listen 127.0.0.1:{self.port}"
        )
        text = replace_once(
            text, rf"root\s+{re.escape(ACME_WEBROOT)};", f"root {self.acme_webroot};"
        )
        if self.certs:
            text = replace_once(
                text,
                r"^[ \t]*listen\s+443\s+ssl(?=[\s;])",
                f"    listen 127.0.0.1:{self.tls_port} ssl",
            )
            return text.replace(CERTS, f"{self.certs}/")
        # TLS ends in front of nginx: the HTTPS server goes, and plain HTTP
        # serves the app where it redirected.
        text = replace_once(
            text, r"^server\s*\{\n(?:\s*#.*\n)*\s*listen\s+443\s(?s:.*?)^\}\n", ""
        )
        return replace_once(
            text,
            r"^[ \t]*location\s+/\s*\{\n\s*return\s+301\s[^\n]*\n\s*\}",
            f"    include {self.prefix}/conf.d/app/locations.conf;",
        )

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
        wait_until_started(self.process, self._listening, timeout=10, log=self.log)
        return self

    def _listening(self) -> bool:
        ports = [port for port in (self.port, self.tls_port) if port]
        return all(port_open("127.0.0.1", port) for port in ports)

    def log(self) -> str:
        """The error log (and anything nginx printed)."""
        parts = [self.prefix / "logs" / "output.log", self.error_log]
        return "".join(path.read_text() for path in parts if path.exists())

    def stop(self) -> None:
        if self.process:
            # SIGTERM: fast shutdown, without waiting for open sockets.
            stop_process(self.process, timeout=10)
            self._output.close()
