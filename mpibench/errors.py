"""The error types of mpibench and the exit code each one ends a run with."""

from __future__ import annotations

EXIT_OK = 0
EXIT_IO = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


class MpibenchError(Exception):
    """Base of every error mpibench reports as one clear line instead of a traceback."""

    exit_code = EXIT_IO

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one-line form printed to the user."""
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def __str__(self) -> str:
        return self.line()

    def __reduce__(self) -> tuple:
        # Errors travel between ranks by pickle: keep every attribute, not only args.
        state = {k: v for k, v in self.__dict__.items() if k != "partial_result"}
        return (_rebuild, (type(self), state))


def _rebuild(cls: type, state: dict) -> MpibenchError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message"), state.get("hint"))
    error.__dict__.update(state)
    return error


class ConfigError(MpibenchError):
    """The configuration or the command line is invalid (exit 2)."""

    exit_code = EXIT_CONFIG


class PreflightError(MpibenchError):
    """A rank-0 check of the storage failed before any benchmark I/O (exit 2)."""

    exit_code = EXIT_CONFIG


class BenchIOError(MpibenchError):
    """An I/O operation failed during a measured phase (exit 1)."""

    exit_code = EXIT_IO

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        rank: int | None = None,
        path: str | None = None,
        errno: int | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.rank = rank
        self.path = path
        self.errno = errno


class VerifyError(BenchIOError):
    """Data read back differs from the data that was written (exit 1)."""


class ResultsError(MpibenchError):
    """A results file cannot be written or read (exit 2)."""

    exit_code = EXIT_CONFIG


class Interrupted(MpibenchError):
    """The run was stopped by SIGINT or SIGTERM (exit 130)."""

    exit_code = EXIT_INTERRUPTED
