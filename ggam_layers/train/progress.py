"""Progress bars on a terminal, plain lines in a log file.

`progress` wraps an iterable in a tqdm bar when stderr is a terminal. When it is not (`> log 2>&1`, CI, nohup), a
bar would fill the log with carriage-return fragments; `LineProgress` prints instead one plain line every
`interval` seconds (`GGAM_PROGRESS_INTERVAL`, default 30) and one when the loop ends, e.g.
``GGAM test_resnet epoch 3/8: 20/31 (65%), 12 s, 1.7 it/s, loss=2.104, acc=31.2%``.
"""
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

__all__ = ['LineProgress', 'progress', 'progress_interval']


def progress_interval() -> float:
    """Seconds between two plain progress lines: `GGAM_PROGRESS_INTERVAL`, default 30."""
    raw = os.environ.get('GGAM_PROGRESS_INTERVAL', '30')
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f'GGAM_PROGRESS_INTERVAL must be a number of seconds, got {raw!r}') from None
    if value < 0:
        raise ValueError(f'GGAM_PROGRESS_INTERVAL must be >= 0, got {raw!r}')
    return value


class LineProgress:
    """A tqdm-like wrapper that writes plain lines (no carriage returns) at most every `interval` seconds.

    Args:
        iterable: What to iterate over.
        desc: Prefix of each line.
        total: Length (default `len(iterable)` where defined).
        interval: Seconds between lines; the last line is always written.
        file: Where to write (default stderr).
    """

    def __init__(self, iterable: Iterable, desc: str = '', total: Optional[int] = None, interval: float = 30.0,
                 file: Optional[TextIO] = None):
        self.iterable = iterable
        self.desc = desc
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, '__len__') else None)
        self.interval = interval
        self.file = file
        self.n = 0
        self.postfix = ''
        self._start = time.monotonic()
        self._last = self._start
        self._closed = False

    def set_postfix(self, refresh: bool = False, **kwargs: Any) -> None:
        """Text after the counts, as tqdm's `set_postfix` (key=value pairs)."""
        self.postfix = ', '.join(f'{k}={v}' for k, v in kwargs.items())

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        count = f'{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)' if self.total else f'{self.n}'
        rate = f', {self.n / elapsed:.1f} it/s' if elapsed > 0 and self.n else ''
        post = f', {self.postfix}' if self.postfix else ''
        return f'{self.desc}: {count}, {elapsed:.0f} s{rate}{post}'

    def _write(self) -> None:
        print(self.line(), file=self.file or sys.stderr, flush=True)
        self._last = time.monotonic()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            self.n += 1
            if time.monotonic() - self._last >= self.interval and (self.total is None or self.n < self.total):
                self._write()
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def close(self) -> None:
        """Write the final line once."""
        if self.n and not self._closed:
            self._closed = True
            self._write()


def progress(iterable: Iterable, desc: str = '', disable: bool = False, total: Optional[int] = None) -> Any:
    """A tqdm bar on a terminal, `LineProgress` when stderr is not one, the bare iterable when disabled."""
    if disable:
        return _Silent(iterable)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
    return LineProgress(iterable, desc=desc, total=total, interval=progress_interval())


class _Silent:
    """The bare iterable with no-op `set_postfix` / `close`, so callers need no branch."""

    def __init__(self, iterable: Iterable):
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        return iter(self.iterable)

    def set_postfix(self, refresh: bool = False, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass
