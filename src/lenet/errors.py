"""The one exception type the CLI turns into a single stderr line and exit code 2.

Raise `LenetError("what is wrong — what to do")` for anything the user can fix
(bad flag value, missing file, corrupt data, mismatched checkpoint). Everything else
is a bug and keeps its traceback.
"""


class LenetError(Exception):
    """A user-facing error: its message is printed as one line, exit code 2."""


class Interrupted(LenetError):
    """Ctrl-C or SIGTERM stopped a long command after saving what it had: exit code 130."""

    exit_code = 130
