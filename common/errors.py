"""One exception type for input the user can fix, so the CLI prints one line instead of a traceback."""


class FedrecError(Exception):
    """An error whose message is complete enough to show the user as-is."""


class DataError(FedrecError):
    """Bad or missing input data: the message names the file, line or field."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM unwinding as Ctrl-C does, with the exit code it calls for (143; Ctrl-C's is 130)."""

    def __init__(self, code: int = 130):
        super().__init__()
        self.code = code
