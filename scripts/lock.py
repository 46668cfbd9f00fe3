"""Compile the dependency locks the template ships, one set per answer combination.

    python scripts/lock.py              # after a change to the dependencies
    python scripts/lock.py --upgrade    # take the newest releases the ranges allow

A generated project installs from two locks: requirements.lock (what the app
runs: the Docker image) and requirements-dev.lock (that and the dev extra:
CI). Which packages they hold depends on four answers (worker_class,
database, broadcast, use_docker), and the hooks never use the network, so the
template ships a compiled pair for each combination under
{{cookiecutter.project_slug}}/locks/ and the post-gen hook keeps the pair its
answers need.

For each combination this bakes the project (without hooks) and runs, in the
bake, the very commands its docs/updates.md gives for refreshing the locks,
starting from the locks shipped now, so a version changes only when the
dependencies or --upgrade ask for it. It also writes locks/compiled-from.json:
what each lock was compiled from, which tests/test_locks.py compares with
every bake.
It needs uv and the package index (https://pypi.org).
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parents[1]
LOCKS_DIR = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "locks"
RECORD = LOCKS_DIR / "compiled-from.json"
CHOICES = {
    key: value
    for key, value in json.loads(
        (TEMPLATE_DIR / "cookiecutter.json").read_text()
    ).items()
    if isinstance(value, list) and not key.startswith("_")
}

# The answers that change requirements.lock, and the one more that changes
# requirements-dev.lock (trustme, for the nginx TLS tests).
RUNTIME_QUESTIONS = ("worker_class", "database", "broadcast")
DEV_QUESTION = "use_docker"

# The refresh commands of the generated docs/updates.md, in its order, without
# --upgrade: (the lock written, the command). --universal with the lowest
# Python the project supports pins one version set for every Python from 3.11
# on and every platform, with the hashes of every file of each version;
# --no-annotate keeps the project's own name (an answer) out of the file. The
# dev lock is constrained by the runtime lock, so CI tests the versions the
# image runs.
COMPILE = (
    "uv pip compile pyproject.toml --universal --python-version 3.11 "
    "--generate-hashes --no-annotate"
)
LOCK_COMMANDS = (
    ("requirements.lock", f"{COMPILE} -o requirements.lock"),
    (
        "requirements-dev.lock",
        f"{COMPILE} --extra dev -c requirements.lock -o requirements-dev.lock",
    ),
)


def runtime_folder(answers):
    """locks/<folder>/requirements.lock for these answers."""
    return "-".join(answers[question] for question in RUNTIME_QUESTIONS)


def lock_paths(answers):
    """{name in the project: path under locks/} for these answers; the
    post-gen hook makes the same choice."""
    folder = runtime_folder(answers)
    return {
        "requirements.lock": f"{folder}/requirements.lock",
        "requirements-dev.lock": (
            f"{folder}/{DEV_QUESTION}-{answers[DEV_QUESTION]}/requirements-dev.lock"
        ),
    }


def runtime_combinations():
    """Each combination of the answers that change requirements.lock."""
    for values in itertools.product(*(CHOICES[q] for q in RUNTIME_QUESTIONS)):
        yield dict(zip(RUNTIME_QUESTIONS, values, strict=True))


def compiled_from(pyproject, with_dev):
    """What a lock is compiled from: the requirements of pyproject.toml, sorted."""
    project = tomllib.loads(pyproject.read_text())["project"]
    record = {
        "requires-python": project["requires-python"],
        "dependencies": sorted(project["dependencies"]),
    }
    if with_dev:
        record["dev"] = sorted(project["optional-dependencies"]["dev"])
    return record


def bake(answers, output_dir, config_file):
    return Path(
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            extra_context={"project_slug": "locked", **answers},
            output_dir=str(output_dir),
            config_file=str(config_file),
            accept_hooks=False,
        )
    )


def uv_command():
    here = str(Path(sys.executable).parent)
    uv = shutil.which("uv", path=os.pathsep.join([here, os.environ["PATH"]]))
    if uv is None:
        sys.exit("error: uv is not installed: python -m pip install uv")
    return uv


def run_lock_command(project, command, upgrade):
    words = command.split()
    words[0] = uv_command()
    if upgrade:
        words.append("--upgrade")
    # uv prints the lock it writes; its progress on stderr is enough.
    subprocess.run(words, cwd=project, check=True, stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="take the newest releases the ranges allow, not the locked ones",
    )
    arguments = parser.parse_args()

    record = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config_file = scratch / "cookiecutterrc.yaml"
        config_file.write_text(
            f"cookiecutters_dir: {scratch / 'cookiecutters'}\n"
            f"replay_dir: {scratch / 'replay'}\n"
        )
        for runtime_answers in runtime_combinations():
            # requirements.lock once, then a dev lock for each use_docker on
            # top of it, so that every lock of a combination pins one version
            # of each package.
            for docker in CHOICES[DEV_QUESTION]:
                answers = {**runtime_answers, DEV_QUESTION: docker}
                print(f"locking {answers}", file=sys.stderr)
                folder = f"{runtime_folder(answers)}-{docker}"
                project = bake(answers, scratch / folder, config_file)
                for name, command in LOCK_COMMANDS:
                    shipped = lock_paths(answers)[name]
                    # uv keeps the versions a lock already pins, unless upgrading.
                    if (LOCKS_DIR / shipped).is_file():
                        shutil.copyfile(LOCKS_DIR / shipped, project / name)
                    if shipped in record:
                        continue  # this combination's runtime lock, made above
                    run_lock_command(project, command, arguments.upgrade)
                    (LOCKS_DIR / shipped).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(project / name, LOCKS_DIR / shipped)
                    record[shipped] = compiled_from(
                        project / "pyproject.toml",
                        with_dev=name != "requirements.lock",
                    )

    # Locks of combinations that no longer exist go.
    for path in sorted(LOCKS_DIR.rglob("*.lock"), reverse=True):
        if str(path.relative_to(LOCKS_DIR)) not in record:
            path.unlink()
    for folder in sorted(LOCKS_DIR.rglob("*"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    RECORD.write_text(json.dumps(dict(sorted(record.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
