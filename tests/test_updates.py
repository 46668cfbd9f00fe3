"""A generated project can follow the template's later changes.

Every bake records its answers in ``.cookiecutter.json`` (a cookiecutter
replay file), so plain ``cookiecutter`` can regenerate it; projects made with
``cruft create`` also get ``.cruft.json``, and ``cruft update`` merges a later
template commit into them as a reviewable change that keeps their own edits.
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ANSWERS_RECORD, TEMPLATE_DIR, require, run

# Not part of the template: the repository's own state, caches and venvs.
NOT_TEMPLATE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*_cache", "*.egg-info", "*.pyc"
)
# Written by the post-gen hook with fresh secrets on every generation.
DIFFERS_ON_EVERY_BAKE = {".env"}

PROJECT_EDIT = "A note of this project's own, which no update may take away."
TEMPLATE_CHANGE = "<!-- a line the template gained after the project was made -->"
NEW_TEMPLATE_FILE = "CHANGES_FROM_THE_TEMPLATE.md"


@pytest.fixture
def git_env(tmp_path):
    """An environment where git commits without the user's identity or config."""
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="Template Test",
        GIT_AUTHOR_EMAIL="template-test@example.com",
        GIT_COMMITTER_NAME="Template Test",
        GIT_COMMITTER_EMAIL="template-test@example.com",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


def answers_in(result):
    """The answers a bake used: its context without cookiecutter's `_` keys."""
    return {k: v for k, v in result.context.items() if not k.startswith("_")}


def files_under(root):
    """{relative path: bytes} for every file under root."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def git(*arguments, cwd, env):
    finished = run(["git", *arguments], cwd=cwd, env=env, timeout=60)
    code = finished.returncode
    assert code == 0, f"git {' '.join(arguments)} exited {code}:\n{finished.stdout}"
    return finished.stdout


def commit_all(repository, message, env):
    """Commit everything in a repository; return the new commit's hash."""
    git("add", "-A", cwd=repository, env=env)
    git("commit", "-q", "-m", message, cwd=repository, env=env)
    return git("rev-parse", "HEAD", cwd=repository, env=env).strip()


def recorded_answers(project):
    return json.loads((project / ANSWERS_RECORD).read_text())["cookiecutter"]


def cruft(*arguments, cwd, env):
    finished = run([sys.executable, "-m", "cruft", *arguments], cwd=cwd, env=env)
    code = finished.returncode
    assert code == 0, f"cruft {' '.join(arguments)} exited {code}:\n{finished.stdout}"
    return finished.stdout


@pytest.mark.parametrize(
    "answers",
    [pytest.param({}, id="defaults"), {"database": "postgresql", "ci": "none"}],
)
def test_bake_records_its_answers_as_a_replay_file(bake, answers):
    result = bake(**answers)
    record = result.project_path / ANSWERS_RECORD
    assert record.is_file(), ".cookiecutter.json was not written"
    assert json.loads(record.read_text()) == {"cookiecutter": answers_in(result)}


def test_replay_file_regenerates_the_same_project(tmp_path, config_file):
    cookiecutter = [sys.executable, "-m", "cookiecutter", "--config-file"]
    cookiecutter += [str(config_file)]
    first, second = tmp_path / "first", tmp_path / "second"
    made = run(
        cookiecutter
        + ["--no-input", str(TEMPLATE_DIR), "-o", str(first)]
        + ["database=postgresql", "broadcast=redis", "ci=none", "use_docker=n"],
        cwd=tmp_path,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout
    [project] = first.iterdir()

    # What the generated README tells a user to run, with the template's path.
    replayed = run(
        cookiecutter
        + ["--replay-file", str(project / ANSWERS_RECORD)]
        + [str(TEMPLATE_DIR), "-o", str(second)],
        cwd=tmp_path,
        timeout=120,
    )
    assert replayed.returncode == 0, replayed.stdout
    regenerated = second / project.name
    assert regenerated.is_dir(), f"the replay made {list(second.iterdir())}"

    original, again = files_under(project), files_under(regenerated)
    assert sorted(original) == sorted(again)
    differ = sorted(name for name in original if original[name] != again[name])
    assert differ == sorted(DIFFERS_ON_EVERY_BAKE)


@dataclass
class CruftProject:
    template: Path  # a git repository: a copy of this template
    project: Path  # a git repository: the project cruft made from it
    git_env: dict

    def git(self, *arguments, cwd):
        return git(*arguments, cwd=cwd, env=self.git_env)

    def commit_template(self, message):
        return commit_all(self.template, message, self.git_env)

    def cruft(self, *arguments):
        return cruft(*arguments, cwd=self.project, env=self.git_env)


@pytest.fixture
def cruft_project(tmp_path, git_env):
    """A git copy of the template, and a project cruft made from it, committed."""
    require(shutil.which("git") is not None, "git is not installed; cruft needs it")
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template, ignore=NOT_TEMPLATE)
    git("init", "-q", "-b", "main", cwd=template, env=git_env)
    first_commit = commit_all(template, "template, first version", git_env)

    out = tmp_path / "projects"
    cruft(
        "create",
        "--no-input",
        str(template),
        "--output-dir",
        str(out),
        cwd=tmp_path,
        env=git_env,
    )
    [project] = out.iterdir()
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(template)
    assert state["commit"] == first_commit
    git("init", "-q", "-b", "main", cwd=project, env=git_env)
    commit_all(project, "generated", git_env)
    return CruftProject(template, project, git_env)


def staged_files(made):
    return sorted(made.git("diff", "--cached", "--name-only", cwd=made.project).split())


@pytest.mark.slow
def test_cruft_update_merges_a_template_change_and_keeps_project_edits(
    cruft_project,
):
    made, project = cruft_project, cruft_project.project
    env_file = (project / ".env").read_bytes()

    # The project's own edit, near the top of its README.
    readme = project / "README.md"
    title, rest = readme.read_text().split("\n", 1)
    readme.write_text(f"{title}\n\n{PROJECT_EDIT}\n{rest}")
    made.git("commit", "-q", "-am", "our own note", cwd=project)

    # The template moves on: a line at the end of the same README, a new file.
    template_project = made.template / "{{cookiecutter.project_slug}}"
    with (template_project / "README.md").open("a") as file:
        file.write(f"\n{TEMPLATE_CHANGE}\n")
    new_file = "# {{ cookiecutter.project_name }}\n"
    (template_project / NEW_TEMPLATE_FILE).write_text(new_file)
    second_commit = made.commit_template("template, second version")

    # Apply without the question a person would answer (y/n/skip/view).
    updated = made.cruft("update", "--skip-apply-ask")
    assert "Failed to apply" not in updated, updated

    text = readme.read_text()
    assert TEMPLATE_CHANGE in text, "the template's change did not arrive"
    assert PROJECT_EDIT in text, "the project's own edit was lost"
    project_name = recorded_answers(project)["project_name"]
    assert (project / NEW_TEMPLATE_FILE).read_text() == f"# {project_name}\n"
    assert not list(project.rglob("*.rej")), "the update left conflicts behind"
    assert (project / ".env").read_bytes() == env_file, "the update rewrote .env"
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second_commit

    # A reviewable change: staged in the working tree, nothing committed.
    assert staged_files(made) == sorted(["README.md", NEW_TEMPLATE_FILE])
    log = made.git("log", "--format=%s", cwd=project)
    assert log.split("\n")[0] == "our own note"
    made.cruft("check")


@pytest.mark.slow
def test_cruft_update_changes_an_answer_as_a_reviewable_change(cruft_project):
    """What the generated README offers to go from memory to Redis broadcast."""
    made, project = cruft_project, cruft_project.project
    package = recorded_answers(project)["package_name"]
    redis_hub = f"src/{package}/realtime/redis_hub.py"
    assert not (project / redis_hub).exists()

    made.cruft(
        "update", "--skip-apply-ask", "--variables-to-update", '{"broadcast": "redis"}'
    )

    assert (project / redis_hub).is_file(), "the Redis hub did not arrive"
    assert "redis>=" in (project / "pyproject.toml").read_text()
    assert recorded_answers(project)["broadcast"] == "redis"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["context"]["cookiecutter"]["broadcast"] == "redis"
    assert redis_hub in staged_files(made)
    assert not list(project.rglob("*.rej")), "the update left conflicts behind"
