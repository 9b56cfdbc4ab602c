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


class raise_on_sigterm:
    """Handle SIGTERM like SIGINT while active: unwind (locks released, cells recorded as interrupted) and
    exit 143. A context manager (the previous handler comes back) or a plain call (stays installed)."""

    def __init__(self) -> None:
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handler)

    @staticmethod
    def _handler(signum, frame):
        raise Interrupted("SIGTERM", 128 + signum)

    def __enter__(self) -> "raise_on_sigterm":
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
