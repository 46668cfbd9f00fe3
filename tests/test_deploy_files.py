"""Static checks of the deployment files, by the tools made for them.

No Docker engine runs here, so: compose.yaml is read by `docker-compose
config` where that command exists (its compose-spec schema check is in
test_bake.py), the Dockerfile by hadolint, and the nginx config, rendered as
the nginx image renders it, by gixy. The same nginx config runs for real in
the generated project's own tests (tests/test_nginx.py).
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import require, run

# Every answer that changes a deployment file, on its own and together.
VARIANTS = [
    pytest.param({}, id="defaults"),
    pytest.param({"database": "postgresql"}, id="database=postgresql"),
    pytest.param({"broadcast": "redis"}, id="broadcast=redis"),
    pytest.param({"worker_class": "gevent"}, id="worker_class=gevent"),
    pytest.param({"python_version": "3.13"}, id="python_version=3.13"),
    pytest.param(
        {"database": "postgresql", "broadcast": "redis"},
        id="database=postgresql,broadcast=redis",
    ),
]

# What the test environment gives compose for its required variables.
COMPOSE_SECRETS = {"SECRET_KEY": "x" * 48, "POSTGRES_PASSWORD": "y" * 24}


def tool(name):
    """A command installed beside this Python (requirements-dev.txt) or on PATH."""
    here = str(Path(sys.executable).parent)
    return shutil.which(name, path=os.pathsep.join([here, os.environ["PATH"]]))


def compose_command():
    """`docker-compose` (v1) or `docker compose` (v2), whichever works."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = run(["docker", "compose", "version"], cwd=Path.cwd(), timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def compose(project):
    return yaml.safe_load((project / "compose.yaml").read_text())


def load_generated_nginx_helper(project):
    """The generated project's tests/nginx.py: one renderer for both suites."""
    spec = importlib.util.spec_from_file_location(
        f"generated_nginx_{id(project)}", project / "tests" / "nginx.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- compose.yaml ---------------------------------------------------------


@pytest.mark.parametrize("answers", VARIANTS)
def test_compose_has_the_services_the_answers_ask_for(baked, answers):
    result = baked(**answers)
    services = compose(result.project_path)["services"]
    expected = {"nginx", "app"}
    if result.context["database"] == "postgresql":
        expected.add("db")
    if result.context["broadcast"] == "redis":
        expected.add("redis")
    assert set(services) == expected


@pytest.mark.parametrize("answers", VARIANTS)
def test_only_nginx_is_published(baked, answers):
    services = compose(baked(**answers).project_path)["services"]
    assert services["nginx"]["ports"] == [
        "${HTTP_PORT:-8080}:80",
        "${HTTPS_PORT:-8443}:443",
    ]
    published = [name for name, service in services.items() if "ports" in service]
    assert published == ["nginx"]


def test_nginx_gets_the_certificate_folder_and_the_published_https_port(baked):
    project = baked().project_path
    nginx = compose(project)["services"]["nginx"]
    assert "./deploy/nginx/certs:/etc/nginx/certs:ro" in nginx["volumes"]
    assert "./deploy/nginx/acme:/var/www/acme:ro" in nginx["volumes"]
    # The redirect names the port browsers reach HTTPS on: the published one.
    assert nginx["environment"]["NGINX_HTTPS_PORT"] == "${HTTPS_PORT:-8443}"
    # What the template reads from those mounts.
    rendered = load_generated_nginx_helper(project).render_server_block()
    assert "ssl_certificate /etc/nginx/certs/fullchain.pem;" in rendered
    assert "ssl_certificate_key /etc/nginx/certs/privkey.pem;" in rendered
    assert "root /var/www/acme;" in rendered
    # The folder ships (its README), so Docker does not create it as root.
    assert (project / "deploy" / "nginx" / "certs" / "README.md").is_file()


def test_nginx_health_check_uses_plain_http_healthz(baked):
    nginx = compose(baked().project_path)["services"]["nginx"]
    test = nginx["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1] == "http://127.0.0.1/healthz"


def test_certificate_folder_is_git_ignored_but_its_readme_is_not(baked):
    project = baked().project_path
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    for secret in ("deploy/nginx/certs/privkey.pem", "deploy/nginx/acme/x"):
        ignored = run(["git", "check-ignore", "-q", secret], cwd=project)
        assert ignored.returncode == 0, f"{secret} is not git-ignored"
    # -q, not -v: -v reports the `!` pattern that matched as a match.
    readme = run(["git", "check-ignore", "-q", "deploy/nginx/certs/README.md"], project)
    assert readme.returncode == 1, "the certificate folder's README is git-ignored"


@pytest.mark.parametrize("answers", VARIANTS)
def test_every_dependency_waits_for_health_and_every_service_restarts(baked, answers):
    services = compose(baked(**answers).project_path)["services"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency], dependency
    assert set(services["nginx"]["depends_on"]) == {"app"}
    assert set(services["app"].get("depends_on", {})) == set(services) - {
        "nginx",
        "app",
    }


@pytest.mark.parametrize("answers", VARIANTS)
def test_app_is_configured_for_the_proxy_and_migrates_first(baked, answers):
    result = baked(**answers)
    services = compose(result.project_path)["services"]
    app, nginx = services["app"], services["nginx"]
    environment = app["environment"]
    assert environment["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert environment["APP_ENV"] == "production"
    assert environment["TRUSTED_PROXY_COUNT"] == "1"
    assert nginx["environment"]["NGINX_UPSTREAM"] == "app:8000"
    command = " ".join(app["command"])
    package = result.context["package_name"]
    assert f"flask --app {package} db upgrade && exec gunicorn" in command
    if result.context["database"] == "postgresql":
        assert "@db:5432/" in environment["DATABASE_URL"]
        assert "pg_isready" in services["db"]["healthcheck"]["test"]
    else:
        instance = f"/usr/local/var/{package}-instance"
        assert f"app-data:{instance}" in app["volumes"]
        assert (
            f"chown app:app {instance}"
            in (result.project_path / "Dockerfile").read_text()
        )
    if result.context["broadcast"] == "redis":
        assert environment["REDIS_URL"] == "redis://redis:6379/0"


@pytest.mark.parametrize("answers", VARIANTS)
def test_docker_compose_config_accepts_the_file(baked, answers, tmp_path):
    command = compose_command()
    require(command is not None, "docker-compose is not installed")
    project = baked(**answers).project_path
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    base = [*command, "--env-file", str(empty_env_file), "config", "--quiet"]
    environ = {**os.environ, **COMPOSE_SECRETS}

    checked = subprocess.run(
        base, cwd=project, env=environ, capture_output=True, text=True, timeout=60
    )
    code = checked.returncode
    assert code == 0, f"{' '.join(base)} failed:\n{checked.stderr}"

    without_key = {k: v for k, v in environ.items() if k != "SECRET_KEY"}
    refused = subprocess.run(
        base, cwd=project, env=without_key, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "set SECRET_KEY in .env or the environment" in refused.stderr


# --- Dockerfile -----------------------------------------------------------


@pytest.mark.parametrize("answers", VARIANTS)
def test_hadolint_passes_on_the_dockerfile(baked, answers):
    hadolint = tool("hadolint")
    require(hadolint is not None, "hadolint is not installed (requirements-dev.txt)")
    project = baked(**answers).project_path
    checked = run(
        [hadolint, "--no-color", "--config", ".hadolint.yaml", "Dockerfile"],
        cwd=project,
        timeout=60,
    )
    code = checked.returncode
    assert code == 0 and not checked.stdout.strip(), f"hadolint:\n{checked.stdout}"


@pytest.mark.parametrize("answers", VARIANTS)
def test_dockerfile_runs_gunicorn_as_a_user_on_the_chosen_python(baked, answers):
    result = baked(**answers)
    dockerfile = (result.project_path / "Dockerfile").read_text()
    version = result.context["python_version"]
    assert f"ARG PYTHON_VERSION={version}\n" in dockerfile
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert stages == ["python:${PYTHON_VERSION}-slim"] * 2
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and not users[-1].startswith(("root", "0")), users
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.M)
    assert dockerfile.rstrip().endswith('CMD ["gunicorn", "-c", "gunicorn.conf.py"]')


@pytest.mark.parametrize("answers", VARIANTS)
def test_dockerfile_installs_the_lock_with_hashes_then_the_project_alone(
    baked, answers
):
    project = baked(**answers).project_path
    dockerfile = (project / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [
        " ".join(line.split())
        for line in dockerfile.splitlines()
        if re.search(r"\bpip (install|wheel)\b", line)
    ]
    assert installs == [
        "RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .",
        "RUN --mount=type=bind,source=requirements.lock,"
        "target=/tmp/requirements.lock "
        "pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock",
        "RUN --mount=type=bind,from=build,source=/wheels,target=/wheels "
        "pip install --no-cache-dir --no-index --no-deps /wheels/*.whl",
    ]
    assert (project / "requirements.lock").is_file()


def test_dockerfile_is_checked_out_with_lf_line_endings(baked):
    project = baked().project_path
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    attributes = run(["git", "check-attr", "eol", "--", "Dockerfile"], cwd=project)
    assert attributes.stdout.strip() == "Dockerfile: eol: lf"


def dockerignore_excludes(patterns, path):
    """Whether Docker leaves `path` out of the build context: the last pattern
    that matches the path or one of its parent folders decides."""
    excluded = False
    parts = path.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = (
            re.escape(glob)
            .replace(r"\*\*/", "(?:.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
            .replace(r"\[", "[")
            .replace(r"\]", "]")
        )
        prefixes = ("/".join(parts[:end]) for end in range(1, len(parts) + 1))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_secrets_and_caches_out_and_lets_the_copies_in(baked):
    result = baked()
    project, package = result.project_path, result.context["package_name"]
    patterns = [
        line.strip()
        for line in (project / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    kept_out = [
        ".env",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "instance/app.db",
        f"src/{package}/__pycache__/config.cpython-312.pyc",
        ".pytest_cache/README.md",
    ]
    let_in = [
        "pyproject.toml",
        "requirements.lock",
        "gunicorn.conf.py",
        f"src/{package}/__init__.py",
        f"src/{package}/static/style.css",
        "migrations/env.py",
    ]
    assert [p for p in kept_out if not dockerignore_excludes(patterns, p)] == []
    assert [p for p in let_in if dockerignore_excludes(patterns, p)] == []

    dockerfile = (project / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M)
    assert copied, "the Dockerfile copies nothing from the context"
    # Bind mounts without from= read the build context too.
    for options in re.findall(r"--mount=type=bind,(\S+)", dockerfile):
        mount = dict(option.split("=", 1) for option in options.split(","))
        if "from" not in mount:
            copied.append(mount["source"])
    assert "requirements.lock" in copied
    assert [p for p in copied if dockerignore_excludes(patterns, p)] == []


# --- nginx ----------------------------------------------------------------


@pytest.mark.parametrize("answers", VARIANTS)
def test_compose_sets_every_variable_of_the_nginx_template(baked, answers):
    project = baked(**answers).project_path
    rendered = load_generated_nginx_helper(project).render_templates()
    assert set(rendered) == {
        "default.conf",
        "app/locations.conf",
        "app/forwarded-headers.conf",
    }
    for name, text in rendered.items():
        assert re.findall(r"\$\{\w+\}", text) == [], name
    assert "server app:8000;" in rendered["default.conf"]


def server_blocks(text):
    """{first listen argument: body} of each top-level server block."""
    blocks = re.findall(r"^server \{\n(.*?)^\}", text, re.M | re.S)
    return {re.search(r"^\s*listen (\S+?)[ ;]", b, re.M).group(1): b for b in blocks}


def location_blocks(body):
    """{location argument(s): body} of a server block's locations."""
    found = re.findall(r"^    location ([^{]+?) \{\n(.*?)^    \}", body, re.M | re.S)
    return dict(found)


def test_plain_http_redirects_to_https_except_health_and_acme(baked):
    nginx = load_generated_nginx_helper(baked().project_path)
    servers = server_blocks(nginx.render_server_block())
    assert set(servers) == {"80", "443"}
    plain = servers["80"]
    included = re.findall(r"^\s*include (\S+);", plain, re.M)
    assert included == ["/etc/nginx/conf.d/app/forwarded-headers.conf"]
    locations = location_blocks(plain)
    assert set(locations) == {"= /healthz", "^~ /.well-known/acme-challenge/", "/"}
    assert "proxy_pass http://app;" in locations["= /healthz"]
    assert "root /var/www/acme;" in locations["^~ /.well-known/acme-challenge/"]
    redirect = "return 301 https://$host$https_port_suffix$request_uri;"
    assert locations["/"].strip().splitlines()[-1].strip() == redirect
    # HSTS over plain HTTP is ignored by browsers (RFC 6797, section 8.1).
    assert not re.search(r"^\s*add_header", plain, re.M)


def test_https_server_has_mozilla_intermediate_tls_and_hsts(baked):
    nginx = load_generated_nginx_helper(baked().project_path)
    https = server_blocks(nginx.render_server_block())["443"]
    assert re.search(r"^    listen 443 ssl;$", https, re.M)
    directives = dict(re.findall(r"^    (ssl_\w+) (.+);$", https, re.M))
    # https://ssl-config.mozilla.org/ guidelines 6.0, "intermediate".
    assert directives["ssl_protocols"] == "TLSv1.2 TLSv1.3"
    assert directives["ssl_ciphers"].split(":") == [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
    assert directives["ssl_prefer_server_ciphers"] == "off"
    assert directives["ssl_session_timeout"] == "1d"
    assert directives["ssl_session_cache"].startswith("shared:")
    hsts = 'add_header Strict-Transport-Security "max-age=63072000" always;'
    assert re.findall(r"^    add_header .*$", https, re.M) == [f"    {hsts}"]
    assert "include /etc/nginx/conf.d/app/locations.conf;" in https


def test_the_https_port_in_the_redirect_follows_the_published_one(baked):
    nginx = load_generated_nginx_helper(baked().project_path)
    rendered = nginx.render_server_block(NGINX_HTTPS_PORT="9443")
    assert re.search(
        r'^map 9443 \$https_port_suffix \{\n    443 +"";\n    default +":9443";\n\}',
        rendered,
        re.M,
    )


def test_app_locations_are_written_once(baked):
    """The locations live in app/locations.conf only, and every location that
    proxies to the app sends the whole forwarded set."""
    rendered = load_generated_nginx_helper(baked().project_path).render_templates()
    locations = rendered["app/locations.conf"]
    assert not re.search(
        r"^\s*location\s", server_blocks(rendered["default.conf"])["443"], re.M
    )
    assert re.findall(r"^location (\S+) \{", locations, re.M) == [
        "/static/",
        "/ws/",
        "/auth/",
        "/",
    ]
    proxied = rendered["default.conf"].count("proxy_pass") + locations.count(
        "proxy_pass"
    )
    included = (rendered["default.conf"] + locations).count(
        "include /etc/nginx/conf.d/app/forwarded-headers.conf;"
    )
    assert proxied == included == 4
    headers = rendered["app/forwarded-headers.conf"]
    assert "proxy_set_header X-Forwarded-Proto $forwarded_proto_chain;" in headers


def test_nginx_limits_auth_with_the_variables_compose_sets(baked):
    """A second line in front of the app's own limits: a limit_req zone per
    client address, applied to /auth/ only, answering 429."""
    project = baked().project_path
    nginx = load_generated_nginx_helper(project).compose_nginx_environment()
    assert nginx["NGINX_AUTH_RATE"] == "1r/s"
    assert nginx["NGINX_AUTH_BURST"] == "40"
    rendered = load_generated_nginx_helper(project).render_templates(
        NGINX_AUTH_RATE="7r/s", NGINX_AUTH_BURST="9"
    )
    assert (
        "limit_req_zone $binary_remote_addr zone=auth:10m rate=7r/s;"
        in rendered["default.conf"]
    )
    auth = re.search(
        r"^location /auth/ \{\n(.*?)^\}", rendered["app/locations.conf"], re.M | re.S
    )
    assert auth, "no /auth/ location"
    assert "    limit_req zone=auth burst=9 nodelay;\n" in auth.group(1)
    assert "    limit_req_status 429;\n" in auth.group(1)
    assert rendered["app/locations.conf"].count("limit_req zone=") == 1
    example = (project / ".env.example").read_text()
    assert "\nNGINX_AUTH_RATE=1r/s\n" in example
    assert "\nNGINX_AUTH_BURST=40\n" in example


def self_signed_pair(folder):
    """fullchain.pem and privkey.pem for localhost, from the openssl CLI."""
    folder.mkdir()
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256"
    command += " -nodes -days 1 -subj /CN=localhost"
    command += " -keyout privkey.pem -out fullchain.pem"
    made = run(command.split(), cwd=folder, timeout=60)
    assert made.returncode == 0, made.stdout
    return folder


@pytest.mark.parametrize("answers", VARIANTS)
def test_nginx_t_accepts_the_config_with_and_without_tls(baked, answers, tmp_path):
    """`nginx -t` on the config as shipped (with a certificate pair) and as the
    README's variant behind a load balancer that ends TLS; tests/nginx.py
    adjusts only paths and ports, as it does in the generated suite."""
    nginx = load_generated_nginx_helper(baked(**answers).project_path)
    require(nginx.find_nginx() is not None, "nginx is not installed")
    require(shutil.which("openssl") is not None, "openssl is not installed")
    certs = self_signed_pair(tmp_path / "certs")
    for name, options in (("tls", {"certs": certs}), ("plain", {})):
        server = nginx.Nginx(tmp_path / name, ["127.0.0.1:9"], **options)
        checked = server.test_config()
        assert checked.returncode == 0, f"{name}:\n{checked.stderr}"


@pytest.mark.parametrize("answers", VARIANTS)
def test_gixy_reports_nothing_on_the_rendered_nginx_config(baked, answers, tmp_path):
    gixy = tool("gixy")
    require(gixy is not None, "gixy is not installed (requirements-dev.txt: gixy-ng)")
    project = baked(**answers).project_path
    nginx = load_generated_nginx_helper(project)

    # As in the container, except that conf.d is a temporary folder; gixy
    # follows the includes into conf.d/app/.
    conf_d = tmp_path / "conf.d"
    for name, text in nginx.render_templates().items():
        (conf_d / name).parent.mkdir(parents=True, exist_ok=True)
        (conf_d / name).write_text(text.replace("/etc/nginx/conf.d/", f"{conf_d}/"))
    main = (project / "deploy" / "nginx" / "nginx.conf").read_text()
    assert main.count("include /etc/nginx/conf.d/*.conf;") == 1
    (tmp_path / "nginx.conf").write_text(
        main.replace("/etc/nginx/conf.d/", f"{tmp_path}/conf.d/")
    )

    checked = subprocess.run(
        [gixy, "--format", "json", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.stdout.strip(), f"gixy printed no report:\n{checked.stderr}"
    report = json.loads(checked.stdout)
    assert report == [], json.dumps(report, indent=2)


NGINX_TESTS = ("nginx.py", "test_nginx.py", "test_tls.py", "test_browser_tls.py")


def test_without_docker_the_nginx_tests_go_with_the_nginx_config(baked):
    tests = baked(use_docker="n").project_path / "tests"
    left = [name for name in NGINX_TESTS if (tests / name).exists()]
    assert not left, f"use_docker=n left tests/{', tests/'.join(left)}"


def test_with_docker_the_nginx_tests_are_kept(baked):
    tests = baked().project_path / "tests"
    assert [name for name in NGINX_TESTS if not (tests / name).exists()] == []
