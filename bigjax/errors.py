"""The one exception type for problems a user can fix."""


class UserError(Exception):
    """Bad input (config, data, workdir); launch.py prints it as one line and exits 1.

    The message is kept to one line whatever it quotes (library errors often span several).
    """

    def __init__(self, message: str):
        super().__init__(' '.join(str(message).split()))
