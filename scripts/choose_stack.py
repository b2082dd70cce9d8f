"""Which runtime stack and virtual environment scripts/setup_env.sh sets up.

classic (requirements.txt: TensorFlow 2.15, Horovod) runs on Python 3.9-3.11; current
(requirements-current.txt: TensorFlow 2.21 with tf_keras, tf.distribute) on 3.10-3.13.
The default is classic where it runs, else current; STACK=classic|current forces one.
The default stack goes into .venv, a forced non-default one into .venv-<stack>.
Prints "<stack> <venv directory name>"; exits 2 with one line for an unsupported pair.
With --find-python (make test) it also prints the interpreter to build that stack's venv
with: the newest Python of the stack's range found on PATH or installed by pyenv when it
is newer than this one (so the current stack is tested on 3.12/3.13), else this Python;
one line on stderr says which. Standard library only: it runs before any venv exists.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys

STACKS = {"classic": ((3, 9), (3, 11)), "current": ((3, 10), (3, 13))}


def default_stack(version: "tuple[int, int]") -> str:
    """The stack a Python version gets when none is forced.

    Args:
        version: (major, minor) of the Python the environment is made with.
    """
    low, high = STACKS["classic"]
    return "classic" if low <= version <= high else "current"


def choose(version: "tuple[int, int]", forced: str = "") -> "tuple[str, str]":
    """(stack, venv directory name) for a Python version; ValueError if unsupported.

    Args:
        version: (major, minor) of the Python the environment is made with.
        forced: "classic" or "current" to force a stack, "" for the default.
    """
    if forced and forced not in STACKS:
        raise ValueError(f"STACK={forced!r}: choose classic or current")
    default = default_stack(version)
    stack = forced or default
    low, high = STACKS[stack]
    if not low <= version <= high:
        which = f"the {stack} stack"
        if not forced:  # no stack runs on it
            which = "this project"
            low, high = min(v[0] for v in STACKS.values()), max(v[1] for v in STACKS.values())
        shown = ".".join(map(str, version))
        raise ValueError(f"{which} needs Python {low[0]}.{low[1]}-{high[0]}.{high[1]}, not {shown}")
    return stack, ".venv" if stack == default else f".venv-{stack}"


def _version_of(python: str) -> "tuple[int, int] | None":
    """(major, minor) that `python` reports, or None when it does not run (a pyenv shim
    of a version not selected says "command not found")."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys, venv; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2 or not all(w.isdigit() for w in words):
        return None
    return int(words[0]), int(words[1])


def _candidates(minor: int) -> "list[str]":
    """Interpreters that may be Python 3.<minor>: on PATH, then pyenv's, newest patch first."""
    found = [shutil.which(f"python3.{minor}")]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    installed = glob.glob(os.path.join(root, "versions", f"3.{minor}.*", "bin", "python3"))

    def patch(path):
        version = path.split(os.sep)[-3].split(".")[2]
        return int(version) if version.isdigit() else -1

    found += sorted(installed, key=patch, reverse=True)
    return [path for path in found if path]


def find_python(stack: str, host: str, host_version: "tuple[int, int]") -> "tuple[str, str]":
    """(interpreter, one line saying which) for `stack`'s venv: the newest one of the
    stack's range newer than the host Python, else the host Python if it is in the range,
    else the newest one of the range found. ValueError if none is.

    Args:
        stack: "classic" or "current".
        host: the host Python's path. host_version: its (major, minor).
    """
    low, high = STACKS[stack]
    host_fits = low <= host_version <= high
    newest_first = range(high[1], low[1] - 1, -1)
    for minor in newest_first:
        if host_fits and (3, minor) <= host_version:
            break
        for python in _candidates(minor):
            if _version_of(python) == (3, minor):
                return python, f"{stack} stack: Python 3.{minor} ({python})"
    if host_fits:
        shown = ".".join(map(str, host_version))
        note = (
            ""
            if host_version == high
            else f"; no newer Python 3.{host_version[1] + 1}-3.{high[1]} was found"
        )
        return host, f"{stack} stack: the host's Python {shown} ({host}){note}"
    raise ValueError(
        f"the {stack} stack needs Python {low[0]}.{low[1]}-{high[0]}.{high[1]}: none found on "
        "PATH or in pyenv"
    )


def parse_version(text: str) -> "tuple[int, int]":
    """(major, minor) from "3.12" or "3.12.1".

    Args:
        text: a Python version.
    """
    parts = text.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        raise ValueError(f"--python-version {text!r}: expected MAJOR.MINOR")
    return int(parts[0]), int(parts[1])


def main(argv: "list[str] | None" = None) -> int:
    """Command line: prints "<stack> <venv>".

    Args:
        argv: the arguments (default: sys.argv[1:]).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="", help="default: this interpreter's")
    parser.add_argument("--stack", default=os.environ.get("STACK", ""), help="default: $STACK")
    parser.add_argument(
        "--find-python",
        action="store_true",
        help="also print the interpreter to build the stack's venv with (make test)",
    )
    args = parser.parse_args(argv)
    try:
        version = (
            parse_version(args.python_version) if args.python_version else sys.version_info[:2]
        )
        if args.find_python:
            stack = args.stack or default_stack(tuple(version))
            python, said = find_python(stack, sys.executable, tuple(version))
            venv = ".venv" if stack == default_stack(tuple(version)) else f".venv-{stack}"
            print(said, file=sys.stderr)
            print(stack, venv, python)
            return 0
        stack, venv = choose(tuple(version), args.stack)
    except ValueError as error:
        print(f"choose_stack.py: error: {error}", file=sys.stderr)
        return 2
    print(stack, venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
