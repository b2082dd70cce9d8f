"""The one exception type for mistakes a user can fix (bad flags, bad data, bad paths).

`main.py` prints its message as one line and exits non-zero, with no traceback. Raise it
with a message that names the problem and the fix.
"""


class UserError(Exception):
    """A problem in the user's input; the message is shown as-is."""

    exit_code = 1
