"""Which runtime stack and virtual environment scripts/setup_env.sh sets up.

classic (requirements.txt: TensorFlow 2.15, Horovod) runs on Python 3.9-3.11; current
(requirements-current.txt: TensorFlow 2.21 with tf_keras, tf.distribute) on 3.10-3.13.
The default is classic where it runs, else current; STACK=classic|current forces one.
The default stack goes into .venv, a forced non-default one into .venv-<stack>.
Prints "<stack> <venv directory name>"; exits 2 with one line for an unsupported pair.
Standard library only: it runs before any virtual environment exists.
"""

import argparse
import os
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
    args = parser.parse_args(argv)
    try:
        version = (
            parse_version(args.python_version) if args.python_version else sys.version_info[:2]
        )
        stack, venv = choose(tuple(version), args.stack)
    except ValueError as error:
        print(f"choose_stack.py: error: {error}", file=sys.stderr)
        return 2
    print(stack, venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
