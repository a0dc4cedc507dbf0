"""User-facing errors: one line saying what is wrong and where; the CLI exits with code 2."""


class UserError(Exception):
    """Bad input (config, data, run dir).  ``str(err)`` is the whole message, one line."""
