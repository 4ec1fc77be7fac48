"""Exceptions raised on bad input, so that callers can tell them from bugs."""


class InputError(ValueError):
    """Bad user input: a file, a matrix or a setting that scvae cannot use.

    The message always names the offending file or setting and what to do about it.
    """


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""


class OutputError(OSError):
    """An output could not be written (full disk, no permission, a file in the way).

    The message names the output file and what to do; ``errno`` is that of the
    underlying :class:`OSError`. No partial file is left under the output's name.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
