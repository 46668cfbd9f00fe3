"""Refuse answers that would generate a broken project, before any file exists.

Cookiecutter renders this file with Jinja, then runs it. The answers arrive as
one JSON document (``| tojson``), so a quote or a backslash in an answer is
data, never code. This script never uses the network.

On a bad answer it prints one line to stderr and exits 1; cookiecutter then
removes the project directory it had created.
"""

import json
import keyword
import re
import sys

# A JSON object never contains three quotes in a row, so the raw string holds.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# Import names of what the generated project installs (its dependencies, the
# dependencies' own, and the dev extra). A package with one of these names
# would hide the real one on sys.path.
DEPENDENCY_NAMES = frozenset(
    {
        "alembic",
        "blinker",
        "click",
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
        "itsdangerous",
        "jinja2",
        "mako",
        "markupsafe",
        "packaging",
        "pip",
        "pluggy",
        "psycopg",
        "psycopg_binary",
        "psycopg2",
        "pytest",
        "redis",
        "requests",
        "ruff",
        "setuptools",
        "simple_websocket",
        "sqlalchemy",
        "typing_extensions",
        "urllib3",
        "websockets",
        "werkzeug",
        "wsproto",
        "wtforms",
        "zope",
    }
)

# Names that pytest and the generated test suite already use.
TEST_NAMES = frozenset({"conftest", "test", "tests"})

# sys.stdlib_module_names exists from Python 3.10 on.
STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ()))

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


def main():
    # The slug comes first: package_name is derived from it by default, so a
    # bad slug usually makes a bad package name too.
    for problem in (
        project_slug_problem(ANSWERS["project_slug"]),
        package_name_problem(ANSWERS["package_name"]),
        author_email_problem(ANSWERS["author_email"]),
    ):
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
