"""User-facing errors.

A `UserError` is a mistake the user can fix (bad path, bad config, bad data). Entry points catch it
and print its message as a single line, with no traceback, then exit with status 2.
"""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem in the user's input; the message names the problem and the fix, on one line."""


def exit_on_user_error(fn):
    """Decorator for entry points: a UserError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
