"""One-line errors for the programs: no traceback unless --verbosity asks.

`reported(main)` wraps a program's `main` for `app.run`: the errors the
library raises about its inputs (a bad flag value, a missing or unreadable
file, a record that cannot be used, a checkpoint that does not fit) end the
program with one line on stderr, `FATAL: <message>`, and exit status 1.
With `--verbosity=1` (or more) the traceback is shown as well.
"""

import functools

from absl import logging

# What the library raises about a program's inputs; its messages name the
# flag, file or record. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def reported(main):
    """`main` whose `USER_ERRORS` exit with one line (status 1)."""

    @functools.wraps(main)
    def wrapper(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if logging.get_verbosity() > logging.INFO:
                raise
            message = " ".join(str(e).split()) or type(e).__name__
            raise SystemExit(f"FATAL: {message}") from None

    return wrapper
