"""The one exception type the command line turns into a clear one-line error."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""

    exit_code = 2
