"""Exceptions raised on bad input, so that callers can tell them from bugs."""


class InputError(ValueError):
    """Bad user input: a file, a matrix or a setting that scvae cannot use.

    The message always names the offending file or setting and what to do about it.
    """


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""
