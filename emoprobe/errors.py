"""Errors caused by what the user gave (a file, a config value), and how scripts report them."""

from __future__ import annotations

import contextlib
import logging
import sys


class UserError(ValueError):
    """A mistake in the user's input; its message names the file, row, column or key."""


class ConfigError(UserError):
    """The config is wrong; the message names the key and what was expected."""


@contextlib.contextmanager
def reported_as_message():
    """Turn a :class:`UserError` into its message on stderr and exit status 1, without a traceback."""
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def log_to(path: str) -> logging.Logger:
    """Send stderr, and a logger writing to it, to a job's log file."""
    sys.stderr = open(path, "w", buffering=1, encoding="utf-8")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    return logging.getLogger("emoprobe")
