"""The one exception type for problems a user can fix."""


class UserError(Exception):
    """Bad input (config, data, workdir); launch.py prints it as one line and exits 1."""
