"""The one exception type for mistakes a user can fix, and TF error messages made short.

`main.py` prints a `UserError`'s message as one line and exits non-zero, with no
traceback. Raise it with a message that names the problem and the fix.
"""

import re


class UserError(Exception):
    """A problem in the user's input; the message is shown as-is."""

    exit_code = 1


def tf_error_message(error: BaseException, limit: int = 300) -> str:
    """The first line of a (TensorFlow) error, without TF's function-node prefix and op
    suffix, at most `limit` characters: fit to follow a colon in a one-line message."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    message = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message)
    return message[:limit]


def run_tool(main, argv=None) -> int:
    """Run a command-line tool's `main(argv)`: a UserError is one `error:` line and its
    exit code, never a traceback; otherwise main's return value (None: 0)."""
    import sys

    try:
        return main(argv) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
