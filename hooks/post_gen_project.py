"""Finish the generated project: write its private .env, record the answers,
drop unchosen parts, and say what to do next.

Cookiecutter renders this file with Jinja and runs it inside the new project.
The answers arrive as one JSON document (``| tojson``), so they are data, never
code. Only ``the_answers`` holds template syntax, so the template's own tests
can import this file as it is and read its lists. This script never uses the
network.
"""

import json
import os
import secrets
import shlex
import shutil
import textwrap
from pathlib import Path


def the_answers():
    # A JSON object never contains three quotes in a row, so the raw string holds.
    return json.loads(r"""{{ cookiecutter | tojson }}""")


# What use_docker = n leaves out of the project, relative to its root.
DOCKER_PATHS = (
    "Dockerfile",
    ".dockerignore",
    "compose.yaml",
    ".hadolint.yaml",
    "deploy",
    # They run the files above through a real nginx.
    "tests/nginx.py",
    "tests/test_nginx.py",
    "tests/test_tls.py",
    "tests/test_browser_tls.py",
)


def unwanted_paths(answers):
    """{(question, answer): what that answer leaves out of the project}.

    Paths are relative to the project root; a path that does not exist is fine.
    """
    package = f"src/{answers['package_name']}"
    return {
        ("use_docker", "n"): DOCKER_PATHS,
        ("ci", "none"): (".github",),
        ("broadcast", "memory"): (
            f"{package}/realtime/redis_hub.py",
            f"{package}/realtime/redis_user_sockets.py",
            "tests/test_redis.py",
        ),
        # A gthread instance holds far fewer sockets than gunicorn's default
        # accept queue.
        ("worker_class", "gthread"): ("tests/test_accept_queue.py",),
        ("database", "sqlite"): (
            # `flask create-database`, and its tests.
            f"{package}/database.py",
            "tests/test_create_database.py",
            # It stops and restarts a PostgreSQL of its own.
            "tests/test_database_down.py",
        ),
    }


# The template ships a compiled pair of dependency locks for each combination
# of the answers that change them (scripts/lock.py makes them); the project
# keeps its own pair and none of the others.
LOCKS_DIR = "locks"


def lock_paths(answers):
    """{lock in the project: the shipped lock under locks/ for these answers}."""
    folder = f"{answers['worker_class']}-{answers['database']}-{answers['broadcast']}"
    return {
        "requirements.lock": f"{folder}/requirements.lock",
        "requirements-dev.lock": (
            f"{folder}/use_docker-{answers['use_docker']}/requirements-dev.lock"
        ),
    }


def keep_the_locks_for(project, answers):
    shipped = project / LOCKS_DIR
    for name, path in lock_paths(answers).items():
        (shipped / path).replace(project / name)
    shutil.rmtree(shipped)


def remove_unwanted_paths(project, answers):
    for (question, answer), paths in unwanted_paths(answers).items():
        if answers.get(question) != answer:
            continue
        for relative in paths:
            path = project / relative
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def dotenv_lines(answers):
    # The key is made here, on the user's machine, and never leaves it:
    # the template holds no secret and the generated .env is git-ignored.
    lines = [
        "# Local settings for development; never commit this file.",
        "# .env.example documents every setting.",
        f"SECRET_KEY={secrets.token_urlsafe(48)}",
        "APP_ENV=development",
    ]
    if answers.get("database") == "postgresql":
        database = answers["package_name"]
        lines.append(
            f"DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        )
        if answers.get("use_docker") == "y":
            # The password of the compose stack's own PostgreSQL (compose.yaml).
            lines.append(f"POSTGRES_PASSWORD={secrets.token_urlsafe(24)}")
    if answers.get("broadcast") == "redis":
        lines.append("REDIS_URL=redis://127.0.0.1:6379/0")
    return lines


def answers_record(answers):
    """The answers alone, as a cookiecutter replay file.

    `cookiecutter --replay-file .cookiecutter.json <template>` regenerates the
    project with them (asking only questions added since). Keys starting with
    `_` are not answers but facts of this one run (the template's path, the
    output folder, cruft's commit), which differ from machine to machine.
    """
    kept = {key: value for key, value in answers.items() if not key.startswith("_")}
    return json.dumps({"cookiecutter": kept}, indent=2, ensure_ascii=False) + "\n"


def write_private_file(path, text):
    # Create it with 0600 from the start, so the key is never readable by others.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(path, 0o600)


def folder_to_cd_into(project, shell_dir):
    """The project's path as the user's shell reaches it: relative when it lies
    under the shell's folder (its $PWD), else absolute."""
    if shell_dir and os.path.isabs(shell_dir):
        try:
            return str(project.resolve().relative_to(Path(shell_dir).resolve()))
        except ValueError:
            pass
    return str(project)


def is_a_copy_to_compare(project, shell_dir):
    """Generated from inside a project of this template, into another folder:
    `cruft update` and `cruft diff` do that in temporary folders they delete,
    and the project's README regenerates it for a diff. Next steps would send
    the user away from the project they are working on."""
    if not shell_dir or not os.path.isabs(shell_dir):
        return False
    inside_a_project = (Path(shell_dir) / ".cookiecutter.json").is_file()
    return inside_a_project and not project.resolve().is_relative_to(
        Path(shell_dir).resolve()
    )


def next_steps(answers, folder):
    """What to type next, for these answers: a few lines for the terminal."""
    about = (
        "make dev installs the project into .venv, migrates the "
        + ("SQLite " if answers["database"] == "sqlite" else "")
        + "database and serves the site at http://127.0.0.1:8000, where you can "
        "register an account."
    )
    if answers["database"] == "postgresql":
        about += (
            f" It creates the database {answers['package_name']} on first run if "
            "it is missing; it needs a PostgreSQL server at DATABASE_URL in .env."
        )
    if answers["broadcast"] == "redis":
        about += " Chat needs a Redis server at REDIS_URL in .env."
    lines = ["Next steps:", f"  cd {shlex.quote(folder)}", "  make dev"]
    # Never split a word: URLs and names stay whole.
    lines += textwrap.wrap(about, 79, break_long_words=False, break_on_hyphens=False)
    if answers["use_docker"] == "y":
        lines.append(
            "Or in Docker: docker compose up --build (see docs/production.md first)."
        )
    return lines


def main():
    project = Path.cwd()
    answers = the_answers()
    remove_unwanted_paths(project, answers)
    keep_the_locks_for(project, answers)
    write_private_file(project / ".env", "\n".join(dotenv_lines(answers)) + "\n")
    (project / ".cookiecutter.json").write_text(
        answers_record(answers), encoding="utf-8"
    )
    shell_dir = os.environ.get("PWD")
    if not is_a_copy_to_compare(project, shell_dir):
        folder = folder_to_cd_into(project, shell_dir)
        print("\n".join(next_steps(answers, folder)))


if __name__ == "__main__":
    main()
