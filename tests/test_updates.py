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
def config_file(tmp_path):
    """A cookiecutter config that keeps replays and clones out of the home."""
    path = tmp_path / "cookiecutterrc.yaml"
    path.write_text(
        f"cookiecutters_dir: {tmp_path / 'cookiecutters'}\n"
        f"replay_dir: {tmp_path / 'replay'}\n"
    )
    return path


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


@pytest.mark.slow
def test_cruft_update_merges_a_template_change_and_keeps_project_edits(
    tmp_path, git_env
):
    require(shutil.which("git") is not None, "git is not installed; cruft needs it")

    # The template as a git repository of its own, at a first commit.
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_DIR, template, ignore=NOT_TEMPLATE)
    git("init", "-q", "-b", "main", cwd=template, env=git_env)
    git("add", "-A", cwd=template, env=git_env)
    git("commit", "-q", "-m", "template, first version", cwd=template, env=git_env)

    # A project made from it with cruft, committed in a repository of its own.
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
    first_commit = git("rev-parse", "HEAD", cwd=template, env=git_env).strip()
    assert state["commit"] == first_commit
    env_file = (project / ".env").read_bytes()
    git("init", "-q", "-b", "main", cwd=project, env=git_env)
    git("add", "-A", cwd=project, env=git_env)
    git("commit", "-q", "-m", "generated", cwd=project, env=git_env)

    # The project's own edit, near the top of its README.
    readme = project / "README.md"
    title, rest = readme.read_text().split("\n", 1)
    readme.write_text(f"{title}\n\n{PROJECT_EDIT}\n{rest}")
    git("commit", "-q", "-am", "our own note", cwd=project, env=git_env)

    # The template moves on: a line at the end of the same README, a new file.
    template_project = template / "{{cookiecutter.project_slug}}"
    with (template_project / "README.md").open("a") as file:
        file.write(f"\n{TEMPLATE_CHANGE}\n")
    new_file = "# {{ cookiecutter.project_name }}\n"
    (template_project / NEW_TEMPLATE_FILE).write_text(new_file)
    git("add", "-A", cwd=template, env=git_env)
    git("commit", "-q", "-m", "template, second version", cwd=template, env=git_env)
    second_commit = git("rev-parse", "HEAD", cwd=template, env=git_env).strip()

    # Apply without the question a person would answer (y/n/skip/view).
    updated = cruft("update", "--skip-apply-ask", cwd=project, env=git_env)
    assert "Failed to apply" not in updated, updated

    text = readme.read_text()
    assert TEMPLATE_CHANGE in text, "the template's change did not arrive"
    assert PROJECT_EDIT in text, "the project's own edit was lost"
    project_name = state["context"]["cookiecutter"]["project_name"]
    assert (project / NEW_TEMPLATE_FILE).read_text() == f"# {project_name}\n"
    assert not list(project.rglob("*.rej")), "the update left conflicts behind"
    assert (project / ".env").read_bytes() == env_file, "the update rewrote .env"
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second_commit

    # A reviewable change: staged in the working tree, nothing committed.
    staged = git("diff", "--cached", "--name-only", cwd=project, env=git_env)
    assert sorted(staged.split()) == sorted(["README.md", NEW_TEMPLATE_FILE])
    log = git("log", "--format=%s", cwd=project, env=git_env)
    assert log.split("\n")[0] == "our own note"
    cruft("check", cwd=project, env=git_env)
