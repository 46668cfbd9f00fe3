"""Bad answers stop generation with one clear line and leave nothing behind.

These run the real ``cookiecutter`` command, as a user would, so they also pin
what reaches the terminal.
"""

import sys

import pytest
from conftest import TEMPLATE_DIR, run

NOT_AN_IDENTIFIER = (
    "is not a Python identifier; use lowercase letters, digits and underscores, "
    "starting with a letter"
)
NOT_A_FOLDER_NAME = (
    "is not a plain folder name; use lowercase letters, digits, '.', '_' and '-', "
    "starting with a letter or digit"
)
NOT_AN_EMAIL = "is not an email address; use the form name@example.com"


def shadows(name, what):
    return (
        f"error: package_name '{name}' shadows the {what} '{name}'; choose another name"
    )


REFUSALS = [
    ("package_name=flask", shadows("flask", "dependency")),
    ("package_name=flask_sock", shadows("flask_sock", "dependency")),
    ("package_name=gunicorn", shadows("gunicorn", "dependency")),
    ("package_name=test", shadows("test", "test package name")),
    ("package_name=tests", shadows("tests", "test package name")),
    ("package_name=json", shadows("json", "standard library module")),
    (
        "package_name=class",
        "error: package_name 'class' is a Python keyword; choose another name",
    ),
    ("package_name=1abc", f"error: package_name '1abc' {NOT_AN_IDENTIFIER}"),
    ("package_name=my-pkg", f"error: package_name 'my-pkg' {NOT_AN_IDENTIFIER}"),
    (
        "package_name=MyPkg",
        "error: package_name 'MyPkg' is not lowercase (PEP 8); use 'mypkg'",
    ),
    ("project_slug=my slug", f"error: project_slug 'my slug' {NOT_A_FOLDER_NAME}"),
    ("project_slug=../evil", f"error: project_slug '../evil' {NOT_A_FOLDER_NAME}"),
    ("project_slug=a..b", f"error: project_slug 'a..b' {NOT_A_FOLDER_NAME}"),
    ("project_slug=-x", f"error: project_slug '-x' {NOT_A_FOLDER_NAME}"),
    ("author_email=not-an-email", f"error: author_email 'not-an-email' {NOT_AN_EMAIL}"),
    ("author_email=a@b", f"error: author_email 'a@b' {NOT_AN_EMAIL}"),
]


@pytest.fixture
def output_dir(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    return path


def cookiecutter_cli(output_dir, config_file, *answers):
    return run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--config-file",
            str(config_file),
            str(TEMPLATE_DIR),
            "-o",
            str(output_dir),
            *answers,
        ],
        cwd=output_dir.parent,
        timeout=120,
    )


def leftovers(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(
    ("answer", "message"), REFUSALS, ids=[answer for answer, _ in REFUSALS]
)
def test_bad_answer_is_refused_with_one_clear_line(
    output_dir, config_file, answer, message
):
    refused = cookiecutter_cli(output_dir, config_file, answer)
    assert refused.returncode != 0, refused.stdout
    lines = refused.stdout.splitlines()
    assert lines.count(message) == 1, f"expected {message!r} in:\n{refused.stdout}"
    assert [line for line in lines if line.startswith("error: ")] == [message]
    assert leftovers(output_dir) == []
    # "../evil" would land beside the output folder: it must be gone too.
    assert not (output_dir.parent / "evil").exists()


def test_slug_with_a_slash_is_refused_and_leaves_no_files(output_dir, config_file):
    refused = cookiecutter_cli(output_dir, config_file, "project_slug=a/b")
    assert refused.returncode != 0, refused.stdout
    assert f"error: project_slug 'a/b' {NOT_A_FOLDER_NAME}" in refused.stdout
    # Cookiecutter creates the folders a/ and a/b/ before the hook runs, and on
    # refusal removes only a/b/: the empty parent a/ is its own leftover.
    assert leftovers(output_dir) in ([], ["a"])
    assert not (output_dir / "a" / "b").exists()


def test_empty_slug_is_refused_when_the_output_folder_is_new(tmp_path, config_file):
    new_output = tmp_path / "new"
    refused = cookiecutter_cli(new_output, config_file, "project_slug=")
    assert refused.returncode != 0, refused.stdout
    assert f"error: project_slug '' {NOT_A_FOLDER_NAME}" in refused.stdout
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
