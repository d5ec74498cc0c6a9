"""Ctrl-C (SIGINT) and SIGTERM during training: stop between two writes, never inside one.

`InterruptGuard` turns both signals into a `TrainingInterrupted` exception (a KeyboardInterrupt, so code that handles
Ctrl-C handles it too). Inside `guard.critical()` (while a checkpoint is written) the signal is held back and raised
when the block ends, so the checkpoint being written completes and stays the newest intact one.
"""
import signal
import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Sequence

__all__ = ['InterruptGuard', 'TrainingInterrupted', 'exit_code']


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by a signal; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def exit_code(exc: BaseException) -> int:
    """The shell's exit status for a run stopped by `exc`: 128 + the signal number (130 for Ctrl-C)."""
    return 128 + getattr(exc, 'signum', signal.SIGINT)


class InterruptGuard:
    """Context manager installing SIGINT / SIGTERM handlers that raise `TrainingInterrupted` (main thread only).

    Args:
        signals: The signals to catch.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.pending: Optional[int] = None
        self._depth = 0
        self._old: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self._depth:
            self.pending = signum
            return
        raise TrainingInterrupted(signum)

    def __enter__(self) -> 'InterruptGuard':
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    @contextmanager
    def critical(self) -> Iterator[None]:
        """Hold signals back inside the block; raise the one that arrived when the block ends without an error."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise TrainingInterrupted(signum)
