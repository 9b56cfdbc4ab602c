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


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT is Python's KeyboardInterrupt; SIGTERM, what Slurm and
    ``timeout`` send, is turned into this by ``raise_on_sigterm``). ``code`` is the shell's exit status."""

    def __init__(self, signal_name: str = "SIGINT", code: int = 130):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.code = code


def raise_on_sigterm() -> None:
    """Handle SIGTERM like SIGINT: unwind (locks released, cells recorded as interrupted), exit 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        raise Interrupted("SIGTERM", 128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
