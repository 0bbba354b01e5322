"""User-facing errors.

A `UserError` is a mistake the user can fix (bad path, bad config, bad data). Entry points catch it
and print its message as a single line, with no traceback, then exit with status 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

# Undo steps for a user error: e.g. remove the output directory a run created before it failed (see
# finetune.train.setup.start_run), so a mistake never leaves a half-written directory behind.
_ON_USER_ERROR: list[Callable[[], None]] = []


def on_user_error(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` if the entry point ends in a UserError; `discard(fn)` once the work it would undo is wanted."""
    _ON_USER_ERROR.append(fn)
    return fn


def discard(fn: Callable[[], None]) -> None:
    if fn in _ON_USER_ERROR:
        _ON_USER_ERROR.remove(fn)


class UserError(Exception):
    """A problem in the user's input; the message names the problem and the fix, on one line."""


def exit_on_user_error(fn):
    """Decorator for entry points: a UserError becomes `error: <message>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            while _ON_USER_ERROR:
                try:
                    _ON_USER_ERROR.pop()()
                except Exception:  # an undo step must not hide the user's error line
                    pass
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
