"""Progress lines of long work: `<what> <n>/<N> (<item>): <detail>; <time>`.

Every step that can take more than half a minute (an export's variants and
its evaluation, the fine-tunes of QAT and pruning, a comparison's models)
reports each item, or every tenth of the items, on standard error:

  variant 2/6 (int8): converted and checked in 4.1 s; 9 s elapsed, ETA 18 s
  qat_int8 fine-tuning step 50/100: loss 0.4121; 31 s elapsed, ETA 31 s
  evaluation image 100/100: 6 models; 2 min elapsed, done

A program's child processes print them too; `is_progress_line` tells their
lines from the rest of their error output, so the parent can pass them on
(`legacy_keras.run` does).
"""

import re
import sys
import time

_LINE = re.compile(r"^[A-Za-z][\w .,()-]* \d+/\d+( \(|:|;|$)")


def emit(text):
    """Writes one progress line to standard error (read at each call)."""
    print(text, file=sys.stderr, flush=True)


def is_progress_line(line):
    """Whether `line` is a progress line of this module."""
    return bool(_LINE.match(line))


def format_seconds(seconds):
    """`12 s`, `4 min`, `1.5 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts the items of a long step and reports them with an ETA.

    Args:
      what: str, what an item is ("variant", "qat_int8 fine-tuning step").
      total: int, the items to come.
      every: int, report every `every`-th item (and the last); default
        about a tenth of `total`.
      log: callable(str) taking each line; default `emit`.
      clock: callable() -> seconds.
    """

    def __init__(self, what, total, *, every=None, log=None, clock=time.monotonic):
        self.what = what
        self.total = int(total)
        self.every = every if every is not None else max(1, self.total // 10)
        self.log = log or emit
        self.clock = clock
        self.count = 0
        self.started = self.item_started = clock()

    def advance(self, label=None, detail=None):
        """Counts one finished item; reports it when due.

        Args:
          label: str or None, the item's name (shown in parentheses).
          detail: str or None, what the item did.

        Returns:
          the line reported, or None.
        """
        self.count += 1
        now = self.clock()
        item_seconds, self.item_started = now - self.item_started, now
        if self.count % self.every and self.count < self.total:
            return None
        line = self.line(now, label, detail, item_seconds)
        self.log(line)
        return line

    def line(self, now, label=None, detail=None, item_seconds=None):
        """The report after `self.count` items, at time `now`."""
        text = f"{self.what} {self.count}/{self.total}"
        if label:
            text += f" ({label})"
        if detail:
            text += f": {detail}"
            if self.every == 1 and item_seconds is not None:
                text += f" in {item_seconds:.1f} s"
        elapsed = now - self.started
        text += f"; {format_seconds(elapsed)} elapsed"
        if self.count < self.total:
            eta = elapsed / self.count * (self.total - self.count)
            text += f", ETA {format_seconds(eta)}"
        else:
            text += ", done"
        return text

    def track(self, items, label=None):
        """Yields `items`, counting each once the consumer asks for the next.

        Args:
          items: an iterable.
          label: callable(item) -> str, or None.
        """
        for item in items:
            yield item
            self.advance(label(item) if label else None)
