"""Wall-clock and CPU time of steps, interleaved: `time_steps` warms each step up, then times rounds of one call of
every step each, so that a load change on a shared machine hits all of them alike."""
import statistics
import time
from typing import Any, Callable, Dict, List, Sequence

import torch

__all__ = ['sync_device', 'time_stats', 'time_steps']


def sync_device(device: str) -> None:
    """Wait for the GPU's queued work (nothing to wait for on the CPU)."""
    if device == 'cuda':
        torch.cuda.synchronize()


def time_stats(times: Sequence[float]) -> Dict[str, float]:
    """Median, min, max and IQR of `times` (seconds), and how many."""
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times), 'iqr_s': q[2] - q[0],
            'repeats': len(times)}


def time_steps(
        steps: Dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str, log: Callable = print,
) -> Dict[str, Dict[str, float]]:
    """Warm each step up, then time `repeats` interleaved rounds (one call of every step per round).

    Returns:
        Per key: wall-clock median, min, max, IQR (seconds), repeats, the warm-up time (compilation included) and,
        on the CPU, the median process CPU time (all threads; robust to other processes taking the cores).
    """
    warm = {}
    for key, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        sync_device(device)
        warm[key] = time.perf_counter() - t0
        log(f'  warm-up {key}: {warm[key]:.1f} s')
    times: Dict[str, List[float]] = {k: [] for k in steps}
    cpu: Dict[str, List[float]] = {k: [] for k in steps}
    for r in range(repeats):
        for key, fn in steps.items():
            sync_device(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync_device(device)
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
        log(f'  round {r + 1}/{repeats}: ' + ', '.join(
            f'{k} {v[-1]:.3f} (cpu {cpu[k][-1]:.3f})' for k, v in times.items()))
    out = {}
    for k, v in times.items():
        out[k] = dict(time_stats(v), warmup_s=warm[k])
        if device == 'cpu':
            c = time_stats(cpu[k])
            out[k].update(cpu_median_s=c['median_s'], cpu_iqr_s=c['iqr_s'])
    return out

