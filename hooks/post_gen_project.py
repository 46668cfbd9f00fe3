"""Finish the generated project: write its private .env, record the answers,
drop unchosen parts.

Cookiecutter renders this file with Jinja and runs it inside the new project.
The answers arrive as one JSON document (``| tojson``), so they are data, never
code. This script never uses the network.
"""

import json
import os
import secrets
import shutil
from pathlib import Path

# A JSON object never contains three quotes in a row, so the raw string holds.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# (question, answer) -> what that answer leaves out of the project.
# Paths are relative to the project root; a path that does not exist is fine.
UNWANTED_PATHS = {
    ("use_docker", "n"): [
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
    ],
    ("ci", "none"): [".github"],
    ("broadcast", "memory"): [
        f"src/{ANSWERS['package_name']}/realtime/redis_hub.py",
        f"src/{ANSWERS['package_name']}/realtime/redis_user_sockets.py",
        "tests/test_redis.py",
    ],
    ("database", "sqlite"): [
        # `flask create-database`, and its tests.
        f"src/{ANSWERS['package_name']}/database.py",
        "tests/test_create_database.py",
        # It stops and restarts a PostgreSQL of its own.
        "tests/test_database_down.py",
    ],
}


def remove_unwanted_paths(project, answers):
    for (question, answer), paths in UNWANTED_PATHS.items():
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


def main():
    project = Path.cwd()
    remove_unwanted_paths(project, ANSWERS)
    write_private_file(project / ".env", "\n".join(dotenv_lines(ANSWERS)) + "\n")
    (project / ".cookiecutter.json").write_text(
        answers_record(ANSWERS), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
