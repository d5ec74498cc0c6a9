"""The one process pool of the benchmarks: persistent worker processes that run a function on task after task.

Used by `benchmarks.ablation` (long trainings side by side, spawned workers reused so that each keeps the generated
data between its runs, no time limit) and `benchmarks.timm_coverage` (thousands of short checks in forked workers,
each task with a CPU and a wall-clock limit). Every worker watches the process that started it and exits when that
process is gone (`exit_with_parent`), so a killed invocation leaves nothing running on into its output folder. A task
that raises, overruns its limit or kills its worker gets an `Outcome` with an `error` instead of a value; a worker
past its limit or dead is replaced, and so is one that has run `max_tasks_per_worker` tasks (bounds memory growth).
"""
import collections
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

__all__ = ['Outcome', 'exit_with_parent', 'process_cpu_seconds', 'run_pool']


@dataclass
class Outcome:
    """What one task gave: its `value`, or the `error` (a traceback, a limit passed, a dead worker) that stopped it."""
    key: Hashable
    value: Any = None
    error: Optional[str] = None
    seconds: float = 0.0


def exit_with_parent(parent: int, poll_s: float = 2.0) -> None:
    """Start a daemon thread that ends this process (exit code 1) once its parent is no longer `parent`: a worker
    whose invoking process is gone exits instead of working on (where a rerun of the command would start the same
    work beside it)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process from /proc (None where there is no /proc)."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, ValueError, IndexError):
        return None


def _worker_main(conn: multiprocessing.connection.Connection, parent: int, fn: Callable[..., Any],
                 initializer: Optional[Callable[..., Any]], initargs: tuple) -> None:
    exit_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)
    conn.send(('ready', None, None))
    while True:
        task = conn.recv()
        if task is None:
            return
        key, args = task
        try:
            conn.send(('done', key, fn(*args)))
        except BaseException:  # noqa: BLE001  (reported as the task's error; the worker goes on)
            conn.send(('error', key, traceback.format_exc()))


class _Worker:
    """One worker process, the task it runs and that task's limits."""

    def __init__(self, ctx: Any, fn: Callable[..., Any], initializer: Optional[Callable[..., Any]], initargs: tuple):
        self.conn, child = ctx.Pipe()
        # not a daemon: a task may start processes of its own (a daemon may not); `run_pool` always stops it
        self.proc = ctx.Process(target=_worker_main, args=(child, os.getpid(), fn, initializer, initargs))
        self.proc.start()
        child.close()
        self.ready = False
        self.task: Optional[Tuple[Hashable, tuple]] = None
        self.deadline = math.inf
        self.started = 0.0
        self.cpu_start: Optional[float] = None
        self.cpu_limit = math.inf
        self.done = 0

    def assign(self, task: Tuple[Hashable, tuple], timeout: Optional[float], wall_factor: float) -> None:
        self.conn.send(task)
        self.task = task
        self.started = time.perf_counter()
        if timeout is None:
            self.cpu_start, self.cpu_limit, self.deadline = None, math.inf, math.inf
            return
        self.cpu_start = process_cpu_seconds(self.proc.pid)
        self.cpu_limit = timeout if self.cpu_start is not None else math.inf
        self.deadline = self.started + timeout * (wall_factor if self.cpu_start is not None else 1.0)

    def over_limit(self, now: float) -> Optional[str]:
        """Why the running task is past its limits, or None."""
        if now > self.deadline:
            return f'timeout: no result after {now - self.started:.0f} s wall-clock'
        if self.cpu_start is not None:
            cpu = process_cpu_seconds(self.proc.pid)
            if cpu is not None and cpu - self.cpu_start > self.cpu_limit:
                return f'timeout: no result after {cpu - self.cpu_start:.0f} CPU seconds'
        return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_pool(
        fn: Callable[..., Any],
        tasks: Sequence[Tuple[Hashable, tuple]],
        workers: int,
        start_method: str = 'spawn',
        initializer: Optional[Callable[..., Any]] = None,
        initargs: tuple = (),
        timeout: Optional[float] = None,
        wall_factor: float = 5.,
        max_tasks_per_worker: Optional[int] = None,
        on_outcome: Optional[Callable[[Outcome], None]] = None,
) -> Dict[Hashable, Outcome]:
    """Run `fn(*args)` for each (key, args) of `tasks` in `workers` persistent processes; results as they come.

    Args:
        fn: A module-level function (spawned workers import it by name).
        tasks: (key, args) pairs, started in order; keys must be distinct.
        workers: Worker processes (at most one per task).
        start_method: 'spawn' (a fresh interpreter per worker) or 'fork' (falls back to 'spawn' where there is none).
        initializer: Called with `initargs` once in each worker, before its first task.
        timeout: Limit per task: CPU seconds of the worker (read from /proc, so that a loaded machine does not cause
            false timeouts) and `wall_factor * timeout` wall-clock seconds against hangs that use no CPU; without
            /proc `timeout` wall-clock seconds. None: no limit.
        wall_factor: See `timeout`.
        max_tasks_per_worker: Replace a worker after this many tasks (None: never).
        on_outcome: Called in this process with each `Outcome` as it arrives.

    Returns:
        The `Outcome` of each task by key.
    """
    method = start_method if start_method in mp.get_all_start_methods() else 'spawn'
    ctx = mp.get_context(method)
    pending = collections.deque(tasks)
    results: Dict[Hashable, Outcome] = {}

    def new_worker() -> _Worker:
        return _Worker(ctx, fn, initializer, initargs)

    def finish(w: _Worker, value: Any = None, error: Optional[str] = None) -> None:
        out = Outcome(w.task[0], value, error, round(time.perf_counter() - w.started, 3))
        results[out.key] = out
        w.task, w.deadline = None, math.inf
        w.done += 1
        if on_outcome is not None:
            on_outcome(out)

    pool: List[_Worker] = [new_worker() for _ in range(min(workers, max(1, len(pending))))]
    try:
        while pending or any(w.task for w in pool):
            for i, w in enumerate(pool):
                if w.ready and w.task is None and pending:
                    if max_tasks_per_worker is not None and w.done >= max_tasks_per_worker:
                        w.stop()
                        pool[i] = new_worker()
                    else:
                        w.assign(pending.popleft(), timeout, wall_factor)
            now = time.perf_counter()
            wait_s = max(0.01, min([w.deadline - now for w in pool] + [1.0]))
            for conn in multiprocessing.connection.wait([w.conn for w in pool], timeout=wait_s):
                i = next(j for j, w in enumerate(pool) if w.conn is conn)
                w = pool[i]
                try:
                    msg, _, payload = conn.recv()
                except (EOFError, OSError):
                    w.proc.join(timeout=5)  # its pipe closes a moment before the process can be reaped
                    code = w.proc.exitcode
                    if not w.ready:  # its start failed (e.g. an import error): a new one would fail alike
                        raise RuntimeError(f'a {method} worker process died before its first task '
                                           f'(exit code {code})') from None
                    if w.task is not None:
                        finish(w, error=f'worker process died (exit code {code}), e.g. out of memory')
                    w.stop(kill=True)
                    pool[i] = new_worker()
                    continue
                if msg == 'ready':
                    w.ready = True
                elif msg == 'done':
                    finish(w, value=payload)
                else:
                    finish(w, error=payload)
            now = time.perf_counter()
            for i, w in enumerate(pool):
                why = w.over_limit(now) if w.task is not None else None
                if why:
                    finish(w, error=why)
                    w.stop(kill=True)
                    pool[i] = new_worker()
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)
    return results
