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
    assert services["nginx"]["ports"] == ["${HTTP_PORT:-8080}:80"]
    published = [name for name, service in services.items() if "ports" in service]
    assert published == ["nginx"]


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
    assert [p for p in copied if dockerignore_excludes(patterns, p)] == []


# --- nginx ----------------------------------------------------------------


@pytest.mark.parametrize("answers", VARIANTS)
def test_compose_sets_every_variable_of_the_nginx_template(baked, answers):
    project = baked(**answers).project_path
    rendered = load_generated_nginx_helper(project).render_server_block()
    assert re.findall(r"\$\{\w+\}", rendered) == []
    assert "server app:8000;" in rendered


@pytest.mark.parametrize("answers", VARIANTS)
def test_gixy_reports_nothing_on_the_rendered_nginx_config(baked, answers, tmp_path):
    gixy = tool("gixy")
    require(gixy is not None, "gixy is not installed (requirements-dev.txt: gixy-ng)")
    project = baked(**answers).project_path
    nginx = load_generated_nginx_helper(project)

    # As in the container, except that conf.d is a temporary folder.
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "default.conf").write_text(nginx.render_server_block())
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


def test_without_docker_the_nginx_tests_go_with_the_nginx_config(baked):
    tests = baked(use_docker="n").project_path / "tests"
    left = [name for name in ("nginx.py", "test_nginx.py") if (tests / name).exists()]
    assert not left, f"use_docker=n left tests/{', tests/'.join(left)}"
