"""Statistics of runs over seeds: mean and sample standard deviation, paired differences with win counts, and the
percent formatting every report of the package and of `benchmarks/` uses.

Two runs with the same seed share the initialisation of the shared backbone, the data order and the augmentation,
so differences are paired by seed; a difference is reported with the number of seeds where it is positive.
"""
import math
from typing import Any, Dict, Mapping, Optional, Sequence

__all__ = ['mean_std', 'paired', 'fmt_pct', 'percent', 'fmt_mean_std', 'fmt_paired']


def _finite(values: Sequence[Optional[float]]) -> list:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """{'mean', 'std'} of the values that are not None / NaN; the std is the sample (n - 1) one, None for one value."""
    vals = _finite(values)
    n = len(vals)
    if n == 0:
        return {'mean': None, 'std': None}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {'mean': mean, 'std': std}


def paired(a: Mapping[int, Optional[float]], b: Mapping[int, Optional[float]]) -> Dict[str, Any]:
    """`a - b` seed by seed on the seeds where both have a value.

    Returns:
        {'seeds', 'per_seed' (the differences), 'mean', 'std', 'n', 'wins' (differences > 0), 'ties' (== 0)}.
    """
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    return {'seeds': seeds, 'per_seed': diffs, **mean_std(diffs), 'n': len(diffs), 'wins': sum(d > 0 for d in diffs),
            'ties': sum(d == 0 for d in diffs)}


def fmt_pct(v: Optional[float], signed: bool = False, empty: str = '-') -> str:
    """A fraction as a percentage with two decimals ('82.30', '+1.20' when signed); `empty` for None."""
    if v is None:
        return empty
    return f'{100 * v:+.2f}' if signed else f'{100 * v:.2f}'


def percent(v: Optional[float]) -> str:
    """A fraction as '82.30%' for log lines; '-' for None."""
    return '-' if v is None else fmt_pct(v) + '%'


def fmt_mean_std(d: Mapping[str, Optional[float]], signed: bool = False, empty: str = '-') -> str:
    """'mean ± std' in percent from a `mean_std` dict (no '±' part for one value)."""
    if d.get('mean') is None:
        return empty
    return fmt_pct(d['mean'], signed) + (f' ± {100 * d["std"]:.2f}' if d.get('std') is not None else '')


def fmt_paired(d: Mapping[str, Any], empty: str = '') -> str:
    """A paired difference as '+1.20 ± 0.80 (3/3)': mean ± std in points and the seeds where it is positive."""
    if d.get('mean') is None:
        return empty
    return f'{fmt_mean_std(d, signed=True)} ({d["wins"]}/{d["n"]})'
