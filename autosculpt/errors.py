"""The one exception type the CLI turns into a one-line error: a shared basic at the package root, so that
``space/``, ``search/`` and ``reports/`` all raise it without importing each other."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix.

    The CLI prints ``error: <message>`` on one line and exits with status 2;
    nothing already stored is touched.
    """
