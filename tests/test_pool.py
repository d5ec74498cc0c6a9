"""benchmarks/pool.py, the process pool of ablation and timm_coverage: values, errors, limits and dead workers."""
import multiprocessing as mp
import os
import time

import pytest
from conftest import load_benchmark

__all__ = []

pool = load_benchmark('pool')
pytestmark = pytest.mark.skipif('fork' not in mp.get_all_start_methods(), reason='the tests pass functions by fork')


def _task(kind: str, x: int):
    if kind == 'raise':
        raise ValueError(f'bad {x}')
    if kind == 'die':
        os._exit(3)
    if kind == 'hang':
        time.sleep(60)
    return x * 2, os.getpid()


def test_values_errors_and_dead_workers_come_back_by_key():
    seen = []
    tasks = [(i, ('ok', i)) for i in range(4)] + [('r', ('raise', 7)), ('d', ('die', 0)), ('after', ('ok', 5))]
    res = pool.run_pool(_task, tasks, 2, start_method='fork', max_tasks_per_worker=2, on_outcome=seen.append)
    assert set(res) == {0, 1, 2, 3, 'r', 'd', 'after'} and [o.key for o in seen] == list(res)
    assert [res[i].value[0] for i in range(4)] == [0, 2, 4, 6] and res['after'].value[0] == 10
    assert all(res[k].error is None for k in (0, 1, 2, 3, 'after'))
    assert res['r'].value is None and 'ValueError: bad 7' in res['r'].error  # the worker's traceback
    assert res['d'].error.startswith('worker process died (exit code 3)')
    assert len({res[i].value[1] for i in range(4)}) >= 2
    pids = [res[k].value[1] for k in (0, 1, 2, 3, 'after')]  # the worker process that ran each task
    assert max(pids.count(p) for p in pids) <= 2  # a worker is replaced after two tasks


def test_a_task_past_its_limit_fails_and_its_worker_is_replaced():
    t0 = time.perf_counter()
    res = pool.run_pool(_task, [('h', ('hang', 0)), ('ok', ('ok', 1))], 1, start_method='fork', timeout=0.5,
                        wall_factor=2.)
    assert time.perf_counter() - t0 < 30
    assert res['h'].error.startswith('timeout: no result after') and res['ok'].value[0] == 2
