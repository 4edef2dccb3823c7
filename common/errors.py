"""One exception type for input the user can fix, so the CLI prints one line instead of a traceback."""


class FedrecError(Exception):
    """An error whose message is complete enough to show the user as-is."""


class DataError(FedrecError):
    """Bad or missing input data: the message names the file, line or field."""
