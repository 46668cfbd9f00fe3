"""The questions, the checks of the answers, and what a bake prints.

These run the real ``cookiecutter`` command, as a user would, so they also pin
what reaches the terminal: the prompts, one line per bad answer, and the next
steps after a bake.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import CHOICES, COOKIECUTTER_JSON, TEMPLATE_DIR, run

NOT_AN_IDENTIFIER = (
    "is not a Python identifier; use lowercase letters, digits and underscores, "
    "starting with a letter"
)
NOT_A_FOLDER_NAME = (
    "is not a plain folder name; use lowercase letters, digits, '.', '_' and '-', "
    "starting with a letter or digit"
)
NOT_AN_EMAIL = "is not an email address; use the form name@example.com"
NOT_ONE_LINE = (
    "is not one line of text; leave out line breaks and other control characters"
)

# What cookiecutter 2.x itself prints on stdout when the pre-generation hook
# exits non-zero: a first line, a traceback of its own frames, and a last line.
COOKIECUTTER_FIRST_LINE = (
    "ERROR: Stopping generation because pre_gen_project hook script didn't exit "
    "successfully"
)
COOKIECUTTER_LAST_LINES = [
    "cookiecutter.exceptions.FailedHookException: Hook script failed (exit status: 1)",
    "Hook script failed (exit status: 1)",
]


def shadows(name, what):
    return (
        f"error: package_name '{name}' shadows the {what} '{name}'; choose another name"
    )


def not_a_folder_name(slug):
    """The lines a bad slug gets: package_name derives from it, so it is bad too."""
    package = slug.replace("-", "_")
    return [
        f"error: project_slug {slug!r} {NOT_A_FOLDER_NAME}",
        f"error: package_name {package!r} {NOT_AN_IDENTIFIER}",
    ]


# One answer each, and every line it gets on stderr.
REFUSALS = [
    ("package_name=flask", [shadows("flask", "dependency")]),
    ("package_name=flask_sock", [shadows("flask_sock", "dependency")]),
    ("package_name=gunicorn", [shadows("gunicorn", "dependency")]),
    ("package_name=test", [shadows("test", "test package name")]),
    ("package_name=tests", [shadows("tests", "test package name")]),
    ("package_name=json", [shadows("json", "standard library module")]),
    (
        "package_name=class",
        ["error: package_name 'class' is a Python keyword; choose another name"],
    ),
    ("package_name=1abc", [f"error: package_name '1abc' {NOT_AN_IDENTIFIER}"]),
    ("package_name=my-pkg", [f"error: package_name 'my-pkg' {NOT_AN_IDENTIFIER}"]),
    (
        "package_name=MyPkg",
        ["error: package_name 'MyPkg' is not lowercase (PEP 8); use 'mypkg'"],
    ),
    ("project_slug=my slug", not_a_folder_name("my slug")),
    ("project_slug=../evil", not_a_folder_name("../evil")),
    ("project_slug=a..b", not_a_folder_name("a..b")),
    # "_x" is an identifier, so the derived package name passes.
    ("project_slug=-x", [f"error: project_slug '-x' {NOT_A_FOLDER_NAME}"]),
    (
        "author_email=not-an-email",
        [f"error: author_email 'not-an-email' {NOT_AN_EMAIL}"],
    ),
    ("author_email=a@b", [f"error: author_email 'a@b' {NOT_AN_EMAIL}"]),
    (
        "project_name=Chat <Hub>",
        [
            "error: project_name 'Chat <Hub>' contains one of < > { }, which "
            "the page templates would read as code; leave them out"
        ],
    ),
    (
        "description=two\nlines",
        [f"error: description 'two\\nlines' {NOT_ONE_LINE}"],
    ),
    ("author_name=tab\there", [f"error: author_name 'tab\\there' {NOT_ONE_LINE}"]),
]


@pytest.fixture
def output_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def cookiecutter_command(config_file, output_dir, *arguments):
    return [
        sys.executable,
        "-m",
        "cookiecutter",
        "--config-file",
        str(config_file),
        str(TEMPLATE_DIR),
        "-o",
        str(output_dir),
        *arguments,
    ]


def shell_environ(cwd, **extra):
    """The environment a shell in ``cwd`` gives the programs it starts."""
    return {**os.environ, "PWD": str(cwd), **extra}


def cookiecutter_cli(output_dir, config_file, *answers):
    """`cookiecutter --no-input`, run from the output folder's parent, with
    stdout and stderr together."""
    cwd = output_dir.parent
    return run(
        cookiecutter_command(config_file, output_dir, "--no-input", *answers),
        cwd=cwd,
        timeout=120,
        env=shell_environ(cwd),
    )


def cookiecutter_apart(output_dir, config_file, *arguments, cwd, stdin=""):
    """cookiecutter with stdout and stderr kept apart, and ``stdin`` typed in."""
    return subprocess.run(
        cookiecutter_command(config_file, output_dir, *arguments),
        cwd=cwd,
        env=shell_environ(cwd, COLUMNS="80", NO_COLOR="1", TERM="dumb"),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def leftovers(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(
    ("answer", "messages"), REFUSALS, ids=[answer for answer, _ in REFUSALS]
)
def test_bad_answer_is_refused_with_one_line_per_problem(
    output_dir, config_file, answer, messages
):
    refused = cookiecutter_cli(output_dir, config_file, answer)
    assert refused.returncode != 0, refused.stdout
    lines = refused.stdout.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == messages
    assert leftovers(output_dir) == []
    # "../evil" would land beside the output folder: it must be gone too.
    assert not (output_dir.parent / "evil").exists()


def test_every_bad_answer_is_reported_in_one_run(output_dir, config_file):
    """A replay file passes every answer as it is, choices included (the
    command line refuses a bad choice itself, before any hook runs)."""
    answers = {
        key: value[0] if isinstance(value, list) else value
        for key, value in COOKIECUTTER_JSON.items()
        if not key.startswith("_")
    }
    answers.update(
        project_slug="chat-hub",
        package_name="import",
        author_email="nope",
        python_version="3.9",
        worker_class="eventlet",
        database="mysql",
        broadcast="kafka",
        use_docker="yes",
        ci="gitlab",
    )
    replay = output_dir.parent / "replay.json"
    replay.write_text(json.dumps({"cookiecutter": answers}))

    refused = cookiecutter_apart(
        output_dir, config_file, "--replay-file", str(replay), cwd=output_dir.parent
    )

    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "error: package_name 'import' is a Python keyword; choose another name",
        f"error: author_email 'nope' {NOT_AN_EMAIL}",
        "error: python_version '3.9' is not one of the choices; "
        "use one of: 3.12, 3.13, 3.11",
        "error: worker_class 'eventlet' is not one of the choices; "
        "use one of: gthread, gevent",
        "error: database 'mysql' is not one of the choices; "
        "use one of: sqlite, postgresql",
        "error: broadcast 'kafka' is not one of the choices; use one of: memory, redis",
        "error: use_docker 'yes' is not one of the choices; use one of: y, n",
        "error: ci 'gitlab' is not one of the choices; use one of: github, none",
    ]
    # Then cookiecutter's own report, as the template's README describes it.
    printed = refused.stdout.splitlines()
    assert printed[:2] == [
        COOKIECUTTER_FIRST_LINE,
        "Traceback (most recent call last):",
    ]
    assert printed[-2:] == COOKIECUTTER_LAST_LINES
    assert all(line.startswith("  ") for line in printed[2:-2]), refused.stdout
    assert leftovers(output_dir) == []


def test_an_empty_project_name_is_refused(output_dir, config_file):
    refused = cookiecutter_cli(
        output_dir, config_file, "project_name= ", "project_slug=chat-hub"
    )
    assert refused.returncode != 0, refused.stdout
    lines = refused.stdout.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [
        "error: project_name is empty; give the project a name"
    ]
    assert leftovers(output_dir) == []


def test_slug_with_a_slash_is_refused_and_leaves_no_files(output_dir, config_file):
    refused = cookiecutter_cli(output_dir, config_file, "project_slug=a/b")
    assert refused.returncode != 0, refused.stdout
    assert refused.stdout.splitlines()[:2] == not_a_folder_name("a/b")
    # Cookiecutter creates the folders a/ and a/b/ before the hook runs, and on
    # refusal removes only a/b/: the empty parent a/ is its own leftover.
    assert leftovers(output_dir) in ([], ["a"])
    assert not (output_dir / "a" / "b").exists()


def test_empty_slug_is_refused_when_the_output_folder_is_new(tmp_path, config_file):
    new_output = tmp_path / "new"
    refused = cookiecutter_cli(new_output, config_file, "project_slug=")
    assert refused.returncode != 0, refused.stdout
    assert refused.stdout.splitlines()[:2] == not_a_folder_name("")
    assert not new_output.exists()


def test_empty_slug_is_refused_when_the_output_folder_exists(output_dir, config_file):
    # The project folder would be the output folder itself: cookiecutter
    # refuses on its own ("directory already exists") before any hook runs.
    refused = cookiecutter_cli(output_dir, config_file, "project_slug=")
    assert refused.returncode != 0, refused.stdout
    assert leftovers(output_dir) == []


def test_project_name_with_spaces_and_digits_bakes(output_dir, config_file):
    baked = cookiecutter_cli(output_dir, config_file, "project_name=Chat Relay 2")
    assert baked.returncode == 0, baked.stdout
    project = output_dir / "chat-relay-2"
    assert (project / "src" / "chat_relay_2").is_dir(), leftovers(output_dir)
    assert (project / ".env").is_file()


def test_answers_with_quotes_and_backslashes_are_read_as_data(output_dir, config_file):
    baked = cookiecutter_cli(
        output_dir,
        config_file,
        'author_name=O\'Brien """Bob""" \\',
        "description=Says \"hi\" \\ and '''bye'''",
    )
    assert baked.returncode == 0, baked.stdout
    assert (output_dir / "realtime-service" / ".env").is_file()


# --- the questions ----------------------------------------------------------

QUESTIONS = [key for key in COOKIECUTTER_JSON if not key.startswith("_")]
PROMPTS = COOKIECUTTER_JSON["__prompts__"]


def test_every_question_has_a_plain_label():
    assert list(PROMPTS) == QUESTIONS
    templated = {key: text for key, text in PROMPTS.items() if "{" in text}
    assert templated == {}, "cookiecutter shows a prompt as it is, unrendered"


def test_the_prompts_read_as_labels_with_their_defaults(output_dir, config_file):
    """All questions answered with Enter, as a user accepting the defaults."""
    asked = cookiecutter_apart(
        output_dir, config_file, cwd=output_dir.parent, stdin="\n" * len(QUESTIONS)
    )
    assert asked.returncode == 0, asked.stdout + asked.stderr

    # Typed answers are not echoed, so each prompt follows the last on its line.
    defaults = {
        "project_slug": "realtime-service",
        "package_name": "realtime_service",
    }
    for number, key in enumerate(QUESTIONS, start=1):
        shown = f"  [{number}/{len(QUESTIONS)}] {PROMPTS[key]}"
        if key in CHOICES:
            options = "".join(
                f"    {index} - {choice}\n"
                for index, choice in enumerate(CHOICES[key], start=1)
            )
            shown += f"\n{options}"
        else:
            shown += f" ({defaults.get(key, COOKIECUTTER_JSON[key])}): "
        # Whole, so neither wrapped at 80 columns nor left as template code.
        assert shown in asked.stdout, asked.stdout


# --- the next steps ---------------------------------------------------------

# Exactly what a bake prints on success, for three sets of answers.
NEXT_STEPS_FOR_THE_DEFAULTS = """\
Next steps:
  cd realtime-service
  make dev
make dev installs the project into .venv, migrates the SQLite database and
serves the site at http://127.0.0.1:8000, where you can register an account.
Or in Docker: docker compose up --build (see docs/production.md first).
"""

NEXT_STEPS_FOR_POSTGRESQL_REDIS_DOCKER = """\
Next steps:
  cd out/chat-hub
  make dev
make dev installs the project into .venv, migrates the database and serves the
site at http://127.0.0.1:8000, where you can register an account. It creates
the database chat_hub on first run if it is missing; it needs a PostgreSQL
server at DATABASE_URL in .env. Chat needs a Redis server at REDIS_URL in .env.
Or in Docker: docker compose up --build (see docs/production.md first).
"""

NEXT_STEPS_FOR_POSTGRESQL_WITHOUT_DOCKER = """\
Next steps:
  cd x
  make dev
make dev installs the project into .venv, migrates the database and serves the
site at http://127.0.0.1:8000, where you can register an account. It creates
the database x on first run if it is missing; it needs a PostgreSQL server at
DATABASE_URL in .env.
"""


def printed_by_bake(output_dir, config_file, *answers, cwd):
    baked = cookiecutter_apart(output_dir, config_file, "--no-input", *answers, cwd=cwd)
    assert baked.returncode == 0, baked.stdout + baked.stderr
    assert baked.stderr == ""
    return baked.stdout


def test_next_steps_for_the_defaults(output_dir, config_file):
    printed = printed_by_bake(output_dir, config_file, cwd=output_dir)
    assert printed == NEXT_STEPS_FOR_THE_DEFAULTS


def test_next_steps_for_postgresql_and_redis_with_docker(output_dir, config_file):
    answers = ["project_name=Chat Hub", "database=postgresql", "broadcast=redis"]
    printed = printed_by_bake(output_dir, config_file, *answers, cwd=output_dir.parent)
    assert printed == NEXT_STEPS_FOR_POSTGRESQL_REDIS_DOCKER


def test_next_steps_for_postgresql_without_docker(output_dir, config_file):
    answers = ["project_slug=x", "database=postgresql", "use_docker=n"]
    printed = printed_by_bake(output_dir, config_file, *answers, cwd=output_dir)
    assert printed == NEXT_STEPS_FOR_POSTGRESQL_WITHOUT_DOCKER


def test_next_steps_name_the_whole_path_outside_the_shells_folder(
    tmp_path, config_file
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    output_dir = tmp_path / "with space"
    printed = printed_by_bake(output_dir, config_file, "use_docker=n", cwd=elsewhere)
    project = (output_dir / "realtime-service").resolve()
    assert printed.splitlines()[1] == f"  cd '{project}'"


def test_no_next_steps_for_a_copy_made_from_inside_a_project(tmp_path, config_file):
    """cruft update, cruft diff and a replay for a diff generate from inside a
    project into another folder; next steps there would point away from it."""
    project = tmp_path / "realtime-service"
    project.mkdir()
    (project / ".cookiecutter.json").write_text("{}")
    output_dir = tmp_path / "regenerated"
    assert printed_by_bake(output_dir, config_file, cwd=project) == ""
    assert (output_dir / "realtime-service" / ".env").is_file()
