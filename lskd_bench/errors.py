"""User-facing errors: the CLI prints one line and exits with code 2."""


class UsageError(Exception):
    """Bad input from the user (unknown name, invalid value, unreadable file...).

    The CLI turns it into ``lskd-bench: error: <message>`` on stderr and exit code 2.
    """


class DataError(UsageError):
    """A sample of the data set cannot be read (truncated or corrupt file...). The message names the file.

    Raised while training, it stops the grid (every cell reads the same data): the cell's error.json
    records it and the CLI prints one line and exits with code 2.
    """
