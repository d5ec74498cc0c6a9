"""One writer per output: a run owns its output folder (or file) from its first check to its end.

`folder_lock(OUT)` takes an exclusive `flock` on `OUT/.ggam-layers.lock` (`file_lock(FILE)`: on `.FILE.lock` beside
it) without waiting: a second run into the same output, in this process or another, raises `OutputInUse` at once,
naming the output and the process holding it (its PID, host, command and start time are written in the lock file).
Releasing removes the lock file, and the folders that taking it created if they stayed empty, so a refused run
leaves nothing behind.

Why `flock` and not a PID file created with O_CREAT|O_EXCL: the kernel drops the lock when its holder ends, however
it ends (SIGKILL, out of memory, a power cut on a local disk), so a lock file left by a killed run never blocks the
next one and no guess about staleness is needed (a PID file needs a liveness check, `os.kill(pid, 0)`, which a
recycled PID or another PID namespace fools, and two runs that find the same stale file race to replace it). A child
made by `fork` (DataLoader workers) closes its copy of the descriptor, so a worker outliving a killed run does not
keep the lock. Where the filesystem has no locks (some network mounts), the run goes on with a warning.

This module sits below the layers' users (train/, predict) and imports none of the package.
"""
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Union

__all__ = ['LOCK_NAME', 'OutputInUse', 'OutputLock', 'folder_lock', 'file_lock']

_logger = logging.getLogger(__name__)

LOCK_NAME = '.ggam-layers.lock'
_ATTEMPTS = 20  # a holder that releases while we open its file makes us retry; 20 in a row does not happen
_HOLDER_WAIT_S = 1.0  # a holder writes its record right after locking: wait this long for it

PathLike = Union[str, os.PathLike]

_held_fds: Set[int] = set()  # this process's lock descriptors, closed in a forked child


def _close_in_child() -> None:
    for fd in list(_held_fds):
        try:
            os.close(fd)  # the parent's descriptor (the same open file) keeps the lock
        except OSError:
            pass
    _held_fds.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_in_child)


class OutputInUse(FileExistsError):
    """Another run (a live process, or this one) holds the output's lock; the message names the output and it."""


def _read_holder(fd: int) -> Dict[str, Any]:
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        try:
            record = json.loads(os.pread(fd, 65536, 0).decode('utf-8'))
            if isinstance(record, dict) and 'pid' in record:
                return record
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.02)


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return 'another process (it has not written its PID yet)'
    where = '' if holder.get('host') in (None, socket.gethostname()) else f' on {holder["host"]}'
    pid = holder['pid']
    who = 'this process' if pid == os.getpid() and not where else f'process {pid}{where}'
    extra = [f'`{holder["command"]}`'] if holder.get('command') else []
    if holder.get('started'):
        extra.append(f'since {holder["started"]}')
    return who + (f' ({", ".join(extra)})' if extra else '')


class OutputLock:
    """An exclusive, non-waiting lock that makes this process the only writer of an output; use it with `with`.

    Args:
        lock_file: The lock file (created, with the folders above it, when missing).
        target: The output it guards (named in messages).
        what: How messages name the output ('output directory', '--out file').
        hint: How to choose another output ('--output', '--out').
    """

    def __init__(self, lock_file: PathLike, target: PathLike, what: str = 'output', hint: str = 'another output'
                 ) -> None:
        self.lock_file = Path(lock_file)
        self.target = Path(target)
        self.what = what
        self.hint = hint
        self._fd: Optional[int] = None
        self._pid = 0
        self._locked = False
        self._created: List[Path] = []

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (or goes on without one where the filesystem has no locks)."""
        return self._locked and self._pid == os.getpid()

    def acquire(self) -> 'OutputLock':
        """Take the lock, or raise `OutputInUse` at once when a live process holds it.

        Raises:
            OutputInUse: Another run holds it; the message names the output, the holder and what to do.
            OSError: The lock file cannot be created (a read-only folder, a file where a folder should be).
        """
        if self.held:
            raise RuntimeError(f'{self.lock_file} is held by this OutputLock already')
        for _ in range(_ATTEMPTS):
            self._make_parents()
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o644)
            except FileNotFoundError:  # a finishing holder removed the folder it had created: take it again
                continue
            try:
                if self._lock(fd) and self._same_file(fd):
                    self._record(fd)
                    self._fd, self._pid, self._locked = fd, os.getpid(), True
                    _held_fds.add(fd)
                    return self
            except BaseException:
                os.close(fd)
                self._remove_created()
                raise
            os.close(fd)  # we locked a file its holder had removed on release: open the new one
        raise OutputInUse(f'{self.what} {self.target}: could not take {self.lock_file} in {_ATTEMPTS} tries (runs '
                          f'start and end on it without pause); try again, or choose {self.hint}')

    def _make_parents(self) -> None:
        missing = []
        folder = self.lock_file.parent
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        self._created = self._created or missing

    def _lock(self, fd: int) -> bool:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            raise OutputInUse(
                f'{self.what} {self.target} is in use by {holder}, which holds {self.lock_file}: one run writes an '
                f'output at a time; wait for that run to end, or choose {self.hint}') from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            _logger.warning('cannot lock %s (%s): the filesystem has no locks, so another run into %s would not be '
                            'detected', self.lock_file, e.strerror, self.target)
        return True

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.lock_file)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    @staticmethod
    def _record(fd: int) -> None:
        argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv and sys.argv[0] else []
        record = {'pid': os.getpid(), 'host': socket.gethostname(), 'command': ' '.join(argv),
                  'started': time.strftime('%Y-%m-%d %H:%M:%S')}
        data = (json.dumps(record) + '\n').encode('utf-8')
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)

    def release(self) -> None:
        """Remove the lock file and let go of the lock; folders that taking it created go too if they are empty.

        A no-op when not held, and in a forked child (the lock stays with the parent)."""
        if not self.held:
            return
        fd, self._fd, self._locked = self._fd, None, False
        try:
            if fd is not None and self._same_file(fd):
                os.unlink(self.lock_file)  # while still locked: the next run creates a new file
        except OSError:
            pass
        finally:
            if fd is not None:
                _held_fds.discard(fd)
                os.close(fd)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there, or another run took it meanwhile)
                break
        self._created = []

    def __enter__(self) -> 'OutputLock':
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f'OutputLock({str(self.lock_file)!r}, held={self.held})'


def folder_lock(folder: PathLike, what: str = 'output directory', hint: str = 'another --output') -> OutputLock:
    """The lock of an output folder: `FOLDER/.ggam-layers.lock`."""
    return OutputLock(Path(folder) / LOCK_NAME, folder, what, hint)


def file_lock(path: PathLike, what: str = 'output file', hint: str = 'another --out') -> OutputLock:
    """The lock of an output file: `.NAME.lock` in the file's folder."""
    path = Path(path)
    return OutputLock(path.parent / f'.{path.name}.lock', path, what, hint)
