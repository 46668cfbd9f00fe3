"""Bake the defaults and every other choice on its own; check what comes out."""

import importlib.util
import re
import stat
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import (
    EACH_CHOICE_ALONE,
    TEMPLATE_DIR,
    ruff,
    run,
    template_has,
    text_files,
    unrendered_leftovers,
)


def load_post_gen_hook():
    """hooks/post_gen_project.py as a module, unrendered: its lists are plain."""
    path = TEMPLATE_DIR / "hooks" / "post_gen_project.py"
    spec = importlib.util.spec_from_file_location("post_gen_project", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What use_docker=n removes, from the hook that removes it.
DOCKER_PATHS = load_post_gen_hook().DOCKER_PATHS


def dotenv(project):
    """The KEY=value pairs of the generated .env, comments skipped."""
    pairs = {}
    for line in (project / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_bake_succeeds_into_the_slug_folder(baked, answers):
    result = baked(**answers)
    project = result.project_path
    assert project.is_dir()
    assert project.name == result.context["project_slug"]
    assert (project / "pyproject.toml").is_file()


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_bake_has_no_unrendered_variables(baked, answers):
    leftovers = unrendered_leftovers(baked(**answers).project_path)
    assert not leftovers, "template syntax left in the output:\n" + "\n".join(leftovers)


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_bake_passes_ruff_check(baked, answers):
    checked = ruff("check", ".", cwd=baked(**answers).project_path)
    code = checked.returncode
    assert code == 0, f"ruff check failed:\n{checked.stdout}"


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_bake_passes_ruff_format_check(baked, answers):
    checked = ruff("format", "--check", ".", cwd=baked(**answers).project_path)
    code = checked.returncode
    assert code == 0, f"ruff format --check failed:\n{checked.stdout}"


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_dotenv_holds_a_private_key_and_the_chosen_services(baked, answers):
    result = baked(**answers)
    project, context = result.project_path, result.context
    path = project / ".env"
    assert path.is_file(), ".env was not written"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    settings = dotenv(project)
    assert len(settings.get("SECRET_KEY", "")) >= 32
    assert settings.get("APP_ENV") == "development"
    if context["database"] == "postgresql":
        assert settings.get("DATABASE_URL") == (
            "postgresql+psycopg://postgres@127.0.0.1:5432/" + context["package_name"]
        )
    else:
        assert "DATABASE_URL" not in settings
    if context["broadcast"] == "redis":
        assert settings.get("REDIS_URL") == "redis://127.0.0.1:6379/0"
    else:
        assert "REDIS_URL" not in settings


@pytest.mark.parametrize("answers", EACH_CHOICE_ALONE)
def test_env_example_documents_what_the_hook_writes_to_dotenv(baked, answers):
    """Every setting has its line in .env.example: the generated suite checks
    that against the settings object (tests/test_config.py), which needs the
    project installed."""
    project = baked(**answers).project_path
    example = project / ".env.example"
    assert example.is_file(), ".env.example is missing"
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example.read_text(), re.M))
    missing = sorted(set(dotenv(project)) - documented)
    assert not missing, f".env.example does not document: {', '.join(missing)}"


# Settings that only one answer uses, and a bake without that answer: it has
# no trace of them, in any file.
SETTINGS_OF_AN_ANSWER = [
    pytest.param({"broadcast": "memory"}, "REDIS_URL", id="memory-REDIS_URL"),
    pytest.param(
        {"worker_class": "gthread"},
        "GUNICORN_WORKER_CONNECTIONS",
        id="gthread-GUNICORN_WORKER_CONNECTIONS",
    ),
    # gunicorn's threads only concern the gthread worker.
    # https://docs.gunicorn.org/en/stable/settings.html#threads
    pytest.param(
        {"worker_class": "gevent"}, "GUNICORN_THREADS", id="gevent-GUNICORN_THREADS"
    ),
]


@pytest.mark.parametrize(("answers", "name"), SETTINGS_OF_AN_ANSWER)
def test_a_setting_of_an_answer_not_chosen_leaves_no_trace(baked, answers, name):
    project = baked(**answers).project_path
    found = [
        f"{path.relative_to(project)}:{number}: {line.strip()}"
        for path, text in text_files(project)
        for number, line in enumerate(text.splitlines(), start=1)
        if name in line
    ]
    assert not found, f"{answers} bakes {name}:\n" + "\n".join(found)


def test_two_bakes_get_different_secret_keys(bake):
    first = dotenv(bake().project_path)["SECRET_KEY"]
    second = dotenv(bake().project_path)["SECRET_KEY"]
    assert first != second


def test_dotenv_is_written_by_the_hook_not_the_template():
    assert not template_has(".env"), "the template must not ship a .env"


def test_dotenv_is_git_ignored_and_env_example_is_not(baked):
    project = baked().project_path
    assert (project / ".gitignore").is_file(), ".gitignore is missing"
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    ignored = run(["git", "check-ignore", "-v", ".env"], cwd=project).returncode
    assert ignored == 0, ".env is not ignored by git"
    if (project / ".env.example").exists():
        kept = run(["git", "check-ignore", "-v", ".env.example"], cwd=project)
        assert kept.returncode == 1, f".env.example is git-ignored: {kept.stdout}"


def test_without_docker_there_are_no_docker_files(baked):
    project = baked(use_docker="n").project_path
    left = [path for path in DOCKER_PATHS if (project / path).exists()]
    assert not left, f"use_docker=n left: {', '.join(left)}"


def test_with_docker_the_docker_files_are_kept(baked):
    project = baked(use_docker="y").project_path
    missing = [path for path in DOCKER_PATHS if not (project / path).exists()]
    assert not missing, f"use_docker=y lost: {', '.join(missing)}"


def test_without_ci_there_is_no_github_folder(baked):
    assert not (baked(ci="none").project_path / ".github").exists()


def test_with_github_ci_the_workflows_are_kept(baked):
    workflows = baked(ci="github").project_path / ".github" / "workflows"
    assert any(workflows.glob("*.y*ml")), "ci=github produced no workflow"


def check_against_builtin_schema(project, schema, files):
    """Validate files with check-jsonschema's vendored schema (no network)."""
    return run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema]
        + [str(path.relative_to(project)) for path in files],
        cwd=project,
    )


@pytest.mark.parametrize(
    "answers", [v for v in EACH_CHOICE_ALONE if v.values[0].get("use_docker") != "n"]
)
def test_compose_file_matches_the_compose_spec(baked, answers):
    project = baked(**answers).project_path
    checked = check_against_builtin_schema(
        project, "vendor.compose-spec", [project / "compose.yaml"]
    )
    code = checked.returncode
    assert code == 0, f"compose.yaml is not valid:\n{checked.stdout}"


@pytest.mark.parametrize(
    "answers", [v for v in EACH_CHOICE_ALONE if v.values[0].get("ci") != "none"]
)
def test_github_workflows_match_their_schema(baked, answers):
    project = baked(**answers).project_path
    workflows = sorted((project / ".github" / "workflows").glob("*.y*ml"))
    assert workflows, "no workflow was generated"
    checked = check_against_builtin_schema(
        project, "vendor.github-workflows", workflows
    )
    code = checked.returncode
    assert code == 0, f"a workflow is not valid:\n{checked.stdout}"


# What CI must run in a generated project, word for word (its README says so):
# the locked dependencies with their hashes, then the project on top of them.
CI_COMMANDS = [
    "python -m pip install --require-hashes -r requirements-dev.lock",
    "python -m pip install --no-deps -e .",
    "ruff check .",
    "ruff format --check .",
    "python -m pytest",
]


@pytest.mark.parametrize(
    "answers", [v for v in EACH_CHOICE_ALONE if v.values[0].get("ci") != "none"]
)
def test_github_workflow_runs_what_the_answers_need(baked, answers):
    result = baked(**answers)
    context = result.context
    text = (result.project_path / ".github" / "workflows" / "ci.yml").read_text()
    # GitHub's own expressions survive cookiecutter's Jinja.
    assert "${{ github.ref }}" in text

    [job] = yaml.safe_load(text)["jobs"].values()
    services = job.get("services", {})
    expected = set()
    if context["database"] == "postgresql":
        expected.add("postgres")
        admin_url = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
        assert job["env"]["TEST_DATABASE_ADMIN_URL"] == admin_url
    if context["broadcast"] == "redis":
        expected.add("redis")
    assert set(services) == expected
    for name, service in services.items():
        assert "--health-cmd" in service.get("options", ""), f"{name}: no health check"
    assert job["env"]["REQUIRE_ALL"] == "1"

    steps = job["steps"]
    [python] = [
        s for s in steps if s.get("uses", "").startswith("actions/setup-python")
    ]
    assert python["with"]["python-version"] == context["python_version"]
    assert python["with"]["cache-dependency-path"] == "requirements-dev.lock"
    script = "\n".join(step.get("run", "") for step in steps)
    missing = [command for command in CI_COMMANDS if command not in script]
    assert not missing, f"the workflow does not run: {missing}"
    apt = set(re.findall(r"apt-get install .*? (\S+)$", script, re.M))
    wanted = {"chromium"}
    if context["use_docker"] == "y":
        wanted.add("nginx")
    if context["broadcast"] == "redis":
        wanted.add("redis-server")
    assert apt == wanted


def test_free_text_answers_with_quotes_keep_pyproject_valid(bake):
    project = bake(
        project_name='Chat "Relay"',
        description='Says "hi" \\ and bye',
        author_name="O'Brien \\ Bob",
    ).project_path
    try:
        tomllib.loads((project / "pyproject.toml").read_text())
    except tomllib.TOMLDecodeError as error:
        pytest.fail(f"pyproject.toml is not valid TOML: {error}")
    checked = ruff("check", ".", cwd=project)
    code = checked.returncode
    assert code == 0, f"ruff check failed:\n{checked.stdout}"
