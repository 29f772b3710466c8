"""The error types of mpibench and the exit code each one ends a run with."""

from __future__ import annotations

EXIT_OK = 0
EXIT_IO = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """`text` with newlines and other control characters escaped (a path or key given by
    the user may hold them), so an error is always exactly one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class MpibenchError(Exception):
    """Base of every error mpibench reports as one clear line instead of a traceback."""

    exit_code = EXIT_IO
    #: True once every rank raises this error at the same point of the run (see `agreed`);
    #: an error only one rank raised must end the job (MPI_Abort), or the others would wait.
    agreed = False

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one-line form printed to the user."""
        return one_line(f"{self.message}; {self.hint}" if self.hint else self.message)

    def __str__(self) -> str:
        return self.line()

    def __reduce__(self) -> tuple:
        # Errors travel between ranks by pickle: keep every attribute, not only args.
        state = {k: v for k, v in self.__dict__.items() if k != "partial_result"}
        return (_rebuild, (type(self), state))


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (SIGINT/SIGTERM) behind `exc`, if any: Python wraps one raised
    inside some machinery (a class body's `__set_name__`, for one) in a RuntimeError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def agreed(error: MpibenchError) -> MpibenchError:
    """Mark an error that every rank raises at this point (after a broadcast or an agreement)."""
    error.agreed = True
    return error


def _rebuild(cls: type[MpibenchError], state: dict) -> MpibenchError:
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

    def line(self) -> str:
        """The one-line form, starting with the failing rank once it is known."""
        text = super().line()
        if self.rank is not None and self.rank >= 0 and not text.startswith("rank "):
            return f"rank {self.rank}: {text}"
        return text


class VerifyError(BenchIOError):
    """Data read back differs from the data that was written (exit 1)."""


class ResultsError(MpibenchError):
    """A results file cannot be written or read (exit 2)."""

    exit_code = EXIT_CONFIG


class Interrupted(MpibenchError):
    """The run was stopped by SIGINT or SIGTERM (exit 130)."""

    exit_code = EXIT_INTERRUPTED
