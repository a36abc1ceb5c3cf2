"""Progress of long stages: a tqdm bar in a terminal, a log line every N seconds everywhere else.

Under ``ray job submit`` (and in CI logs, Ray worker logs, ``nohup``) stderr is not a terminal: a tqdm bar
there redraws with carriage returns that no log viewer shows until the stage ends. :func:`progress` gives
the same tqdm object in both cases; without a terminal its refreshes are written as ordinary log lines
(``INFO videoalign_ray.progress: decode+encode videos and prompts:  40%|####  | 1600/4000 [01:20<02:00, 20.0item/s]``), at
most one per ``VIDEOALIGN_PROGRESS_EVERY_S`` seconds (default 30) and one when the stage ends.
"""

from __future__ import annotations

import io
import logging
import os
import sys

from tqdm.auto import tqdm

log = logging.getLogger("videoalign_ray.progress")

DEFAULT_EVERY_S = 30.0


class _LogLines(io.StringIO):
    """A text stream for tqdm that turns each redraw (``\\r<bar>``) into one log record."""

    def __init__(self, logger: logging.Logger):
        super().__init__()
        self._logger = logger

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self._logger.info(line)
        return len(text)

    def flush(self) -> None:
        pass


class _LogBar(tqdm):
    """tqdm whose ``set_postfix`` / ``set_description`` wait for the next throttled refresh: tqdm's default
    ``refresh=True`` would write a log line on every call (a line per training step), defeating the interval."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=refresh)


def every_s() -> float:
    """Seconds between progress lines without a terminal (``VIDEOALIGN_PROGRESS_EVERY_S``, default 30).

    Raises:
        ValueError: the variable is set to something that is not a positive number.
    """
    raw = os.environ.get("VIDEOALIGN_PROGRESS_EVERY_S", "")
    if not raw:
        return DEFAULT_EVERY_S
    value = float(raw)
    if not value > 0:
        raise ValueError(f"VIDEOALIGN_PROGRESS_EVERY_S must be a positive number of seconds, got {raw!r}")
    return value


def progress(total: int | None, desc: str, unit: str = "it", *, initial: int = 0, tty: bool | None = None) -> tqdm:
    """A tqdm progress bar for ``total`` units of ``desc``; call ``update(n)``, ``set_postfix`` and ``close()``
    as with tqdm. ``tty`` (default: whether stderr is a terminal) picks the bar or the log lines."""
    if tty if tty is not None else sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, mininterval=2.0)
    interval = every_s()
    # ncols fixed and ascii: the same line in any log viewer; the monitor thread is off (it only tunes miniters)
    return _LogBar(total=total, desc=desc, unit=unit, initial=initial, file=_LogLines(log), mininterval=interval,
                maxinterval=max(interval, 10.0), ncols=100, ascii=True, miniters=1)
