"""Static checks of the deployment files, by the tools made for them.

No Docker engine runs here, so: compose.yaml is read by `docker-compose
config` where that command exists (its compose-spec schema check is in
test_bake.py), the Dockerfile by hadolint (and its HEALTHCHECK command is run
here), and the nginx config, rendered as the nginx image renders it, by gixy.
The same nginx config runs for real in the generated project's own tests
(tests/test_nginx.py), found from the Dockerfile's nginx stage as its image is.
"""

import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import require, run

# Every answer that changes a deployment file, on its own and together.
DEPLOYMENT_ANSWERS = [
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
    """The generated project's tests/nginx.py: one renderer for both suites.
    Loaded as a module of the generated tests package, under a name of its own,
    for its import of tests/processes.py."""
    package = f"generated_tests_{next(_loaded)}"
    tests = project / "tests"
    spec = importlib.util.spec_from_file_location(
        package, tests / "__init__.py", submodule_search_locations=[str(tests)]
    )
    sys.modules[package] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[package])
    return importlib.import_module(f"{package}.nginx")


_loaded = itertools.count()


# --- compose.yaml ---------------------------------------------------------


def readme_settings(project):
    """The variables of the generated README's settings table, in its order."""
    readme = (project / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, re.M)


def env_example_variables(project):
    """The variables `.env.example` gives a line `NAME=...` to."""
    example = (project / ".env.example").read_text()
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M)


def settings_fixed_for_the_stack(context, secrets=None):
    """What compose.yaml gives the app whatever .env and the shell say: as the
    file writes it, or, with `secrets`, as `docker-compose config` resolves it."""
    package = context["package_name"]
    fixed = {
        "APP_ENV": "production",
        "SECRET_KEY": "${SECRET_KEY:?set SECRET_KEY in .env or the environment}",
        "HOST": "0.0.0.0",
        "TRUSTED_PROXY_COUNT": "1",
        "FORWARDED_ALLOW_IPS": "*",
    }
    if context["database"] == "postgresql":
        password = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env or the "
        password += "environment}"
        fixed["DATABASE_URL"] = (
            f"postgresql+psycopg://{package}:{password}@db:5432/{package}"
        )
    if context["broadcast"] == "redis":
        fixed["REDIS_URL"] = "redis://redis:6379/0"
    if secrets is None:
        return fixed
    required = re.compile(r"\$\{(\w+):\?[^}]*\}")
    return {
        name: required.sub(lambda match: secrets[match.group(1)], value)
        for name, value in fixed.items()
    }


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_compose_has_the_services_the_answers_ask_for(baked, answers):
    result = baked(**answers)
    services = compose(result.project_path)["services"]
    expected = {"nginx", "migrate", "app", "prometheus"}
    if result.context["database"] == "postgresql":
        expected.add("db")
    if result.context["broadcast"] == "redis":
        expected.add("redis")
    assert set(services) == expected


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_only_nginx_is_published(baked, answers):
    """Beyond the host; Prometheus, which has no login, on its loopback only."""
    services = compose(baked(**answers).project_path)["services"]
    assert services["nginx"]["ports"] == [
        "${HTTP_PORT:-8080}:80",
        "${HTTPS_PORT:-8443}:443",
    ]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    published = [name for name, service in services.items() if "ports" in service]
    assert published == ["nginx", "prometheus"]


def test_nginx_mounts_only_the_certificates_and_acme_and_gets_the_https_port(baked):
    project = baked().project_path
    nginx = compose(project)["services"]["nginx"]
    # Secrets and certbot's files only: what nginx serves is in its image.
    assert nginx["volumes"] == [
        "./deploy/nginx/certs:/etc/nginx/certs:ro",
        "./deploy/nginx/acme:/var/www/acme:ro",
    ]
    # The redirect names the port browsers reach HTTPS on: the published one.
    assert nginx["environment"]["NGINX_HTTPS_PORT"] == "${HTTPS_PORT:-8443}"
    # What the template reads from those mounts.
    rendered = load_generated_nginx_helper(project).render_server_block()
    assert "ssl_certificate /etc/nginx/certs/fullchain.pem;" in rendered
    assert "ssl_certificate_key /etc/nginx/certs/privkey.pem;" in rendered
    assert "root /var/www/acme;" in rendered
    # The folder ships (its README), so Docker does not create it as root.
    assert (project / "deploy" / "nginx" / "certs" / "README.md").is_file()


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_nginx_runs_the_dockerfile_nginx_stage_with_config_and_static_files(
    baked, answers
):
    """The image alone serves the site: compose builds nginx from the
    Dockerfile's nginx stage, which copies the config and the package's static
    folder in, and the config serves /static/ from there."""
    result = baked(**answers)
    project, package = result.project_path, result.context["package_name"]
    nginx = compose(project)["services"]["nginx"]
    assert nginx["build"] == {"context": ".", "target": "nginx"}
    assert "image" not in nginx
    assert dockerfile_stages(project)["nginx"] == "nginx:1.28-alpine"
    helper = load_generated_nginx_helper(project)
    assert helper.nginx_image_copies() == {
        "/etc/nginx/nginx.conf": project / "deploy" / "nginx" / "nginx.conf",
        "/etc/nginx/templates": project / "deploy" / "nginx" / "templates",
        "/srv/static": project / "src" / package / "static",
    }
    locations = helper.render_templates()["app/locations.conf"]
    static = re.search(r"^location /static/ \{\n(.*?)^\}", locations, re.M | re.S)
    assert static and static.group(1) == "    alias /srv/static/;\n"


def test_nginx_health_check_uses_plain_http_healthz(baked):
    nginx = compose(baked().project_path)["services"]["nginx"]
    assert nginx["healthcheck"]["test"] == [
        "CMD",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        "-T",
        "2",
        "http://127.0.0.1/healthz",
    ]


def test_certificate_folder_is_git_ignored_but_its_readme_is_not(baked):
    project = baked().project_path
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    for secret in ("deploy/nginx/certs/privkey.pem", "deploy/nginx/acme/x"):
        ignored = run(["git", "check-ignore", "-q", secret], cwd=project)
        assert ignored.returncode == 0, f"{secret} is not git-ignored"
    # -q, not -v: -v reports the `!` pattern that matched as a match.
    readme = run(["git", "check-ignore", "-q", "deploy/nginx/certs/README.md"], project)
    assert readme.returncode == 1, "the certificate folder's README is git-ignored"


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_every_dependency_is_waited_for_and_only_migrate_stays_stopped(baked, answers):
    project = baked(**answers).project_path
    services = compose(project)["services"]
    for name, service in services.items():
        restart = "no" if name == "migrate" else "unless-stopped"
        assert service.get("restart") == restart, name
        for dependency, condition in service.get("depends_on", {}).items():
            if dependency == "migrate":
                assert condition == {"condition": "service_completed_successfully"}
                continue
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            if dependency == "app":
                # The image's own check, written once: the Dockerfile's.
                assert "healthcheck" not in services["app"]
                assert dockerfile_healthcheck(project)
            else:
                assert "healthcheck" in services[dependency], dependency
    assert set(services["nginx"]["depends_on"]) == {"app"}
    assert set(services["prometheus"]["depends_on"]) == {"app"}
    backing = set(services) - {"nginx", "migrate", "app", "prometheus"}
    assert set(services["app"]["depends_on"]) == {"migrate"} | backing
    assert set(services["migrate"].get("depends_on", {})) == backing & {"db"}


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_migrations_run_once_in_a_service_of_their_own_from_the_app_image(
    baked, answers
):
    """`--scale app=3` runs three apps and one migration: the app only serves
    (the image's CMD), and `migrate` runs `db upgrade` with the same image,
    settings and volumes, then exits."""
    result = baked(**answers)
    project, package = result.project_path, result.context["package_name"]
    services = compose(project)["services"]
    app, migrate = services["app"], services["migrate"]
    assert migrate["command"] == ["flask", "--app", package, "db", "upgrade"]
    # Nothing serves /healthz there: the image's check is turned off.
    assert migrate["healthcheck"] == {"disable": True}
    assert "command" not in app
    assert app["build"] == migrate["build"] == "."
    assert app["environment"] == migrate["environment"]
    assert app.get("volumes") == migrate.get("volumes")
    if result.context["database"] == "postgresql":
        assert "volumes" not in app
        assert "pg_isready" in services["db"]["healthcheck"]["test"]
    else:
        instance = f"/usr/local/var/{package}-instance"
        assert app["volumes"] == [f"app-data:{instance}"]
        assert f"chown app:app {instance}" in (project / "Dockerfile").read_text()


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_every_setting_of_the_readme_and_env_example_reaches_the_app(baked, answers):
    """Each setting of the README's table is in the app's environment: fixed
    for the stack, or passed on by name with no value, so that .env or the
    shell gives it and, set in neither, config.py's default applies (no
    default is written twice). .env.example lists the same settings, and the
    variables compose.yaml itself reads."""
    result = baked(**answers)
    project = result.project_path
    environment = compose(project)["services"]["app"]["environment"]
    settings = readme_settings(project)
    assert "PORT" in settings, "no settings table found in README.md"
    fixed = settings_fixed_for_the_stack(result.context)

    assert sorted(environment) == sorted(settings)
    assert {name: environment[name] for name in fixed} == fixed
    passed_on = [name for name in settings if environment[name] is None]
    assert passed_on == [name for name in settings if name not in fixed]

    example = env_example_variables(project)
    assert [name for name in settings if name not in example] == []
    compose_text = (project / "compose.yaml").read_text()
    compose_reads = set(re.findall(r"\$\{(\w+)", compose_text))
    others = [name for name in example if name not in settings]
    assert [name for name in others if name not in compose_reads] == []


def compose_config(project, env_file, shell):
    """The services as `docker-compose config` resolves them, with `env_file`
    in place of .env and, of the variables .env.example names, only `shell` in
    the environment."""
    command = compose_command()
    require(command is not None, "docker-compose is not installed")
    names = set(readme_settings(project)) | set(env_example_variables(project))
    environ = {k: v for k, v in os.environ.items() if k not in names}
    checked = subprocess.run(
        [*command, "--env-file", str(env_file), "config"],
        cwd=project,
        env={**environ, **shell},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, f"docker-compose config:\n{checked.stderr}"
    return yaml.safe_load(checked.stdout)["services"]


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_docker_compose_config_passes_every_setting_to_the_app(
    baked, answers, tmp_path
):
    result = baked(**answers)
    project = result.project_path
    settings = readme_settings(project)
    # A value of its own for each setting in the file compose reads as .env...
    dotenv = {name: f"{name.lower()}-from-dotenv" for name in settings}
    dotenv.update(PORT="9000", WEB_CONCURRENCY="3", WS_PING_INTERVAL="20")
    dotenv.update(COMPOSE_SECRETS)
    env_file = tmp_path / "dotenv"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in dotenv.items()))
    # ...and, as in the issue, two in the shell, which wins over .env.
    shell = {"WEB_CONCURRENCY": "4", "WS_PING_INTERVAL": "10"}

    services = compose_config(project, env_file, shell)
    fixed = settings_fixed_for_the_stack(result.context, COMPOSE_SECRETS)
    expected = {
        name: fixed.get(name, shell.get(name, dotenv[name])) for name in settings
    }
    assert services["app"]["environment"] == expected
    assert services["migrate"]["environment"] == expected
    # gunicorn binds PORT; nginx's upstream follows it.
    assert services["nginx"]["environment"]["NGINX_UPSTREAM"] == "app:9000"
    assert services["app"]["expose"] == ["9000"]


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_docker_compose_config_gives_no_value_for_a_setting_set_nowhere(
    baked, answers, tmp_path
):
    """No value (v1 writes null, v2 leaves the name out): the container does
    not get the variable, and config.py's default applies."""
    result = baked(**answers)
    project = result.project_path
    env_file = tmp_path / "dotenv"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in COMPOSE_SECRETS.items()))

    services = compose_config(project, env_file, shell={})
    fixed = settings_fixed_for_the_stack(result.context, COMPOSE_SECRETS)
    for service in ("app", "migrate"):
        environment = services[service]["environment"]
        given = {name: value for name, value in environment.items() if value}
        assert given == fixed, service
    assert services["nginx"]["environment"]["NGINX_UPSTREAM"] == "app:8000"


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
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


def dockerfile_stages(project):
    """{stage name, or its position for an unnamed one: base image}."""
    dockerfile = (project / "Dockerfile").read_text()
    found = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", dockerfile, re.M)
    return {name or str(n): image for n, (image, name) in enumerate(found)}


def dockerfile_healthcheck(project):
    """(options, command) of the HEALTHCHECK, its command in exec form."""
    dockerfile = (project / "Dockerfile").read_text().replace("\\\n", "")
    found = re.findall(r"^HEALTHCHECK (.*?)\s+CMD (\[.*\])$", dockerfile, re.M)
    assert len(found) == 1, "the Dockerfile needs one HEALTHCHECK in exec form"
    options, command = found[0]
    return options.split(), json.loads(command)


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
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


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_dockerfile_runs_gunicorn_as_a_user_on_the_chosen_python(baked, answers):
    result = baked(**answers)
    dockerfile = (result.project_path / "Dockerfile").read_text()
    version = result.context["python_version"]
    assert f"ARG PYTHON_VERSION={version}\n" in dockerfile
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    python = "python:${PYTHON_VERSION}-slim"
    assert stages == [python, "nginx:1.28-alpine", python]
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and not users[-1].startswith(("root", "0")), users
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.M)
    assert dockerfile.rstrip().endswith('CMD ["gunicorn", "-c", "gunicorn.conf.py"]')


class HealthzStandIn(BaseHTTPRequestHandler):
    """200 on /healthz, as the app answers; 404 elsewhere."""

    paths = []

    def do_GET(self):
        self.paths.append(self.path)
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_image_health_check_follows_port(baked):
    """The HEALTHCHECK's own command, run by this Python as the container's
    runs it: it asks /healthz on PORT, and fails once nothing answers there."""
    options, command = dockerfile_healthcheck(baked().project_path)
    assert options == [
        "--interval=10s",
        "--timeout=3s",
        "--start-period=30s",
        "--retries=3",
    ]
    assert command[:2] == ["python", "-c"]
    probe = [sys.executable, *command[1:]]
    server = ThreadingHTTPServer(("127.0.0.1", 0), HealthzStandIn)
    port = str(server.server_address[1])
    environ = {**os.environ, "PORT": port}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answered = run(probe, cwd=Path.cwd(), env=environ, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert answered.returncode == 0, answered.stdout
    assert HealthzStandIn.paths == ["/healthz"]
    refused = run(probe, cwd=Path.cwd(), env=environ, timeout=30)
    assert refused.returncode == 1, refused.stdout


def test_the_app_port_defaults_to_config_py_wherever_it_is_needed(baked):
    """PORT's default is config.py's; what must know the port before the app
    runs (the image's health check, nginx's upstream) falls back to the same.
    The README's settings table states it, and the generated suite checks the
    table against the settings (tests/test_config.py)."""
    project = baked().project_path
    readme = (project / "README.md").read_text()
    default = re.search(r"^\| `PORT` \| `(\d+)` \|", readme, re.M).group(1)
    assert default == "8000"
    _, command = dockerfile_healthcheck(project)
    assert f"os.environ.get('PORT', '{default}')" in command[2]
    assert f"\nEXPOSE {default}\n" in (project / "Dockerfile").read_text()
    services = compose(project)["services"]
    nginx_upstream = services["nginx"]["environment"]["NGINX_UPSTREAM"]
    assert nginx_upstream == f"app:${{PORT:-{default}}}"
    assert services["app"]["expose"] == [f"${{PORT:-{default}}}"]


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
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
        "deploy/nginx/certs/privkey.pem",
        "deploy/nginx/certs/fullchain.pem",
        "deploy/nginx/acme/.well-known/acme-challenge/token",
    ]
    let_in = [
        "pyproject.toml",
        "requirements.lock",
        "gunicorn.conf.py",
        f"src/{package}/__init__.py",
        f"src/{package}/static/style.css",
        "migrations/env.py",
        "deploy/nginx/nginx.conf",
        "deploy/nginx/templates/default.conf.template",
        "deploy/nginx/templates/app/locations.conf.template",
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


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
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
    assert re.search(r"^    listen 443 ssl backlog=65535;", https, re.M)
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


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
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


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
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


# --- Prometheus (the optional service) --------------------------------------


def prometheus_config(project):
    return project / "deploy" / "prometheus" / "prometheus.yml"


@pytest.mark.parametrize("answers", DEPLOYMENT_ANSWERS)
def test_prometheus_is_optional_and_reads_the_shipped_scrape_config(baked, answers):
    project = baked(**answers).project_path
    prometheus = compose(project)["services"]["prometheus"]
    # Off unless `--profile metrics` asks for it.
    assert prometheus["profiles"] == ["metrics"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    assert prometheus["volumes"] == [
        "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "prometheus-data:/prometheus",
    ]
    assert prometheus_config(project).is_file()


def test_prometheus_scrapes_metrics_of_every_app_container_on_the_app_port(baked):
    project = baked().project_path
    config = yaml.safe_load(prometheus_config(project).read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (lookup,) = job["dns_sd_configs"]
    # Each replica of `app`, on config.py's default PORT.
    assert lookup == {"names": ["app"], "type": "A", "port": 8000}
    default_port = re.search(
        r"^\| `PORT` \| `(\d+)` \|", (project / "README.md").read_text(), re.M
    ).group(1)
    assert lookup["port"] == int(default_port)


def test_promtool_accepts_the_prometheus_config(baked):
    promtool = tool("promtool")
    require(
        promtool is not None,
        "promtool is not installed (Debian: apt-get install prometheus)",
    )
    config = prometheus_config(baked().project_path)
    checked = run([promtool, "check", "config", str(config)], cwd=config.parent)
    assert checked.returncode == 0, checked.stdout
    assert "SUCCESS" in checked.stdout


def test_nginx_refuses_metrics(baked):
    project = baked().project_path
    locations = load_generated_nginx_helper(project).render_templates()[
        "app/locations.conf"
    ]
    assert re.search(r"location = /metrics \{\s*return 404;\s*\}", locations)


def test_without_docker_nothing_of_prometheus_is_left(baked):
    """The app keeps /metrics; the service, its config and their docs go."""
    project = baked(use_docker="n").project_path
    files = [path for path in project.rglob("*") if path.is_file()]
    assert [path for path in files if "prometheus" in path.name] == []
    assert not (project / "deploy").exists()
    for path in files:
        if path.suffix in {".md", ".py", ".toml", ".yaml", ".yml", ".example"}:
            text = path.read_text()
            for trace in ("deploy/prometheus", "--profile metrics", "prom/prometheus"):
                assert trace not in text, f"{trace} in {path.relative_to(project)}"
