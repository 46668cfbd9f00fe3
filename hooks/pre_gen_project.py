"""Refuse answers that would generate a broken project, before any file exists.

Cookiecutter renders this file with Jinja, then runs it. The answers arrive as
one JSON document (``| tojson``), so a quote or a backslash in an answer is
data, never code. This script never uses the network.

Every answer is checked, and every problem is printed to stderr as one line
starting with "error: ", so one run shows all that needs changing; then the
script exits 1 and cookiecutter removes the project directory it had created.
"""

import json
import keyword
import re
import sys

# A JSON object never contains three quotes in a row, so the raw string holds.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# Import names of what the generated project installs (its dependencies, the
# dependencies' own, and the dev extra: every package of its locks, which
# tests/test_hooks.py checks). A package with one of these names would hide the
# real one on sys.path.
DEPENDENCY_NAMES = frozenset(
    {
        "alembic",
        "annotated_types",
        "async_timeout",
        "blinker",
        "certifi",
        "cffi",
        "charset_normalizer",
        "click",
        "colorama",
        "cryptography",
        "deprecated",
        "dns",
        "dotenv",
        "email_validator",
        "flask",
        "flask_login",
        "flask_migrate",
        "flask_sock",
        "flask_sqlalchemy",
        "flask_wtf",
        "gevent",
        "greenlet",
        "gunicorn",
        "h11",
        "idna",
        "iniconfig",
        "itsdangerous",
        "jinja2",
        "limits",
        "mako",
        "markupsafe",
        "packaging",
        "pip",
        "playwright",
        "pluggy",
        "prometheus_client",
        "psycopg",
        "psycopg2",
        "psycopg_binary",
        "pycparser",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "pygments",
        "pytest",
        "redis",
        "requests",
        "ruff",
        "setuptools",
        "simple_websocket",
        "sqlalchemy",
        "trustme",
        "typing_extensions",
        "typing_inspection",
        "tzdata",
        "urllib3",
        "websockets",
        "werkzeug",
        "wrapt",
        "wsproto",
        "wtforms",
        "zope",
    }
)

# Names that pytest and the generated test suite already use.
TEST_NAMES = frozenset({"conftest", "test", "tests"})

# sys.stdlib_module_names exists from Python 3.10 on.
STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ()))

# The questions that offer choices, as cookiecutter.json lists them (its tests
# bake every choice there, so one missing here fails them). Cookiecutter
# refuses another value on its command line, but a replay file
# (.cookiecutter.json) passes unchecked.
CHOICES = {
    "python_version": ("3.12", "3.13", "3.11"),
    "worker_class": ("gthread", "gevent"),
    "database": ("sqlite", "postgresql"),
    "broadcast": ("memory", "redis"),
    "use_docker": ("y", "n"),
    "ci": ("github", "none"),
}

# The project name is written as it is into the page templates, which Flask's
# Jinja renders at run time: braces could open template code there, and angle
# brackets HTML tags.
PAGE_MARKUP = frozenset("{}<>")

SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
PACKAGE_PATTERN = re.compile(r"[a-z_][a-z0-9_]*")
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def project_slug_problem(slug):
    if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug) or ".." in slug:
        return (
            f"project_slug {slug!r} is not a plain folder name; use lowercase "
            "letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return None


def package_name_problem(name):
    if not isinstance(name, str) or not name.isidentifier():
        return (
            f"package_name {name!r} is not a Python identifier; use lowercase "
            "letters, digits and underscores, starting with a letter"
        )
    if not PACKAGE_PATTERN.fullmatch(name):
        suggestion = name.lower()
        if PACKAGE_PATTERN.fullmatch(suggestion):
            return f"package_name {name!r} is not lowercase (PEP 8); use {suggestion!r}"
        return (
            f"package_name {name!r} is not lowercase ASCII (PEP 8); use lowercase "
            "letters, digits and underscores"
        )
    if keyword.iskeyword(name):
        return f"package_name {name!r} is a Python keyword; choose another name"
    if name in DEPENDENCY_NAMES:
        return (
            f"package_name {name!r} shadows the dependency {name!r}; "
            "choose another name"
        )
    if name in TEST_NAMES:
        return (
            f"package_name {name!r} shadows the test package name {name!r}; "
            "choose another name"
        )
    if name in STDLIB_NAMES:
        return (
            f"package_name {name!r} shadows the standard library module {name!r}; "
            "choose another name"
        )
    return None


def author_email_problem(email):
    if not isinstance(email, str) or not EMAIL_PATTERN.fullmatch(email):
        return (
            f"author_email {email!r} is not an email address; "
            "use the form name@example.com"
        )
    return None


def one_line_problem(question, text):
    if not isinstance(text, str) or not text.isprintable():
        return (
            f"{question} {text!r} is not one line of text; "
            "leave out line breaks and other control characters"
        )
    return None


def project_name_problem(name):
    if problem := one_line_problem("project_name", name):
        return problem
    if not name.strip():
        return "project_name is empty; give the project a name"
    if PAGE_MARKUP.intersection(name):
        # No doubled braces here: cookiecutter renders this file with Jinja.
        marks = " ".join(sorted(PAGE_MARKUP))
        return (
            f"project_name {name!r} contains one of {marks}, which the page "
            "templates would read as code; leave them out"
        )
    return None


def choice_problem(question, answer):
    if answer not in CHOICES[question]:
        choices = ", ".join(CHOICES[question])
        return f"{question} {answer!r} is not one of the choices; use one of: {choices}"
    return None


def problems(answers):
    """The problem with each answer that has one, in the order of the questions."""
    found = [
        project_name_problem(answers.get("project_name")),
        project_slug_problem(answers.get("project_slug")),
        package_name_problem(answers.get("package_name")),
        one_line_problem("description", answers.get("description")),
        one_line_problem("author_name", answers.get("author_name")),
        author_email_problem(answers.get("author_email")),
    ]
    found += [choice_problem(question, answers.get(question)) for question in CHOICES]
    return [problem for problem in found if problem]


def main():
    found = problems(ANSWERS)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
