"""One exception type for input the user can fix, so the CLI prints one line instead of a traceback."""


class FedrecError(Exception):
    """An error whose message is complete enough to show the user as-is."""


class DataError(FedrecError):
    """Bad or missing input data: the message names the file, line or field."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM unwinding the command, with the exit code it calls for (128 + the signal: 130, 143).

    Not a KeyboardInterrupt, which typer turns into a silent exit and Flower's simulation runtime catches
    in its own loop; not an Exception, which library code catches broadly."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.code = 128 + signum
