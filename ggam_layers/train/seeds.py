"""GGAM against the plain backbone (or any two arms) over several seeds: per-seed pairs, mean ± std, paired
differences, wins.

A single-seed gap between two from-scratch trainings is an anecdote: seeds move test accuracy by several points.
`train_compare_seeds` runs `train_compare` (GGAM and the plain backbone, or two of `compare.ARMS`, same data, seed
and recipe) once per seed into OUT/seed<S>/, and `seed_summary` reduces the results: each seed's pair, the mean and
sample standard deviation of each model, and the paired difference first - second (same seed: same initialisation
of the shared backbone, data order and augmentation) with the number of seeds where the first is ahead.
"""
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .._files import atomic_write_json
from .build import build_datasets
from .compare import arm_name, check_arms, train_compare
from .distributed import broadcast_object, cleanup_distributed, init_distributed
from .run_dir import claim_output, default_output
from .stats import fmt_mean_std, fmt_pct, mean_std, paired

__all__ = ['seed_summary', 'format_seed_summary', 'train_compare_seeds']

_METRICS = ('test_top1', 'test_top5', 'train_top1')


def seed_summary(results: Mapping[int, Mapping[str, Mapping[str, Any]]], metric: str = 'test_top1',
                 arms: Sequence[str] = ('ggam', 'plain')) -> Dict[str, Any]:
    """Reduce `{seed: {'ggam': result, 'plain': result}}` (results of `train`; keyed by `arms`) over seeds.

    Returns:
        {'metric', 'arms', 'seeds', 'per_seed': [{'seed', A, B, 'diff'}], A: {'mean', 'std'}, B: {'mean', 'std'},
        'diff': {'mean', 'std'} (A - B), 'wins' (seeds with A > B), 'ties', 'n'} for `arms` = (A, B), by default
        ('ggam', 'plain'); the standard deviations are sample (n - 1) ones, None for one seed.
    """
    if not results:
        raise ValueError('results must hold at least one seed')
    a, b = check_arms(arms)
    per_seed: List[Dict[str, Any]] = []
    for seed in sorted(results):
        pair = results[seed]
        missing = [k for k in (a, b) if pair.get(k) is None or pair[k].get(metric) is None]
        if missing:
            raise ValueError(f'seed {seed}: no {metric} for {", ".join(missing)}')
        x, y = float(pair[a][metric]), float(pair[b][metric])
        per_seed.append({'seed': seed, a: x, b: y, 'diff': x - y})
    diff = paired({r['seed']: r[a] for r in per_seed}, {r['seed']: r[b] for r in per_seed})
    return {
        'metric': metric, 'arms': [a, b], 'seeds': [r['seed'] for r in per_seed], 'per_seed': per_seed,
        'n': len(per_seed), a: mean_std([r[a] for r in per_seed]), b: mean_std([r[b] for r in per_seed]),
        'diff': {'mean': diff['mean'], 'std': diff['std']}, 'wins': diff['wins'], 'ties': diff['ties'],
    }


def format_seed_summary(summary: Mapping[str, Any], ggam_name: str = 'GGAM', plain_name: str = 'plain') -> str:
    """A table: one row per seed (first, second, first - second, in %; GGAM and plain by default), then mean ± std
    and the win count. `ggam_name` / `plain_name` head the two columns."""
    a, b = summary.get('arms', ('ggam', 'plain'))
    rows = [(f'seed {r["seed"]}', fmt_pct(r[a]), fmt_pct(r[b]), fmt_pct(r['diff'], True))
            for r in summary['per_seed']]
    rows.append(('mean ± std', fmt_mean_std(summary[a]), fmt_mean_std(summary[b]),
                 fmt_mean_std(summary['diff'], True)))
    short = {'ggam': 'GGAM', 'se': 'SE', 'cbam': 'CBAM', 'plain': 'plain'}
    head = (summary['metric'].replace('_', ' ') + ' (%)', ggam_name, plain_name,
            f'{short.get(a, a)} - {short.get(b, b)}')
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    def line(cells: Sequence[str]) -> str:
        return '  '.join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    lines = [line(head)] + [line(r) for r in rows]
    lines.append(f'{short.get(a, a)} ahead on {summary["wins"]} of {summary["n"]} seeds'
                 + (f' ({summary["ties"]} tied)' if summary['ties'] else '') + '; the difference is paired by seed '
                 '(same initialisation, data order and augmentation).')
    return '\n'.join(lines)


def train_compare_seeds(cfg: Any, seeds: Sequence[int], train_dataset: Any = None, eval_dataset: Any = None,
                        command: Optional[str] = None, arms: Sequence[str] = ('ggam', 'plain')) -> Dict[str, Any]:
    """`train_compare` once per seed into OUT/seed<S>/, then the summary (printed, and written to OUT/seeds.json).

    Args:
        cfg: The run's `TrainConfig`; its `seed` is replaced by each of `seeds` and its `output` is the parent folder.
        seeds: Distinct seeds.
        train_dataset / eval_dataset: Optional datasets, shared by every run.
        command: The command line, recorded in each run's config.
        arms: The two models of each seed (`compare.ARMS`), GGAM and plain by default.

    Returns:
        {'summary': `seed_summary` of test top-1, 'summaries': {metric: summary}, 'results': {seed: {...}}}.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds must be distinct integers, at least one, got {list(seeds)}')
    arms = check_arms(arms)
    cfg = cfg.validate()
    t0 = time.perf_counter()
    info = init_distributed(cfg.device)  # one process group for every seed (the nested runs join it)
    try:
        out = Path(broadcast_object(cfg.output or default_output(cfg, '-seeds'), info))
        with claim_output(out, info):  # OUT for every seed; each comparison locks OUT/seed<S>
            if train_dataset is None or eval_dataset is None:  # built once: the seeds share the data
                built = build_datasets(cfg)
                train_dataset = train_dataset if train_dataset is not None else built[0]
                eval_dataset = eval_dataset if eval_dataset is not None else built[1]
            results: Dict[int, Dict[str, Any]] = {}
            for seed in seeds:
                sub = dataclasses.replace(cfg, seed=seed, output=str(out / f'seed{seed}'))
                results[seed] = train_compare(sub, train_dataset, eval_dataset, command, arms)
            summaries = {m: seed_summary(results, m, arms) for m in _METRICS}
            if info.is_main:
                table = format_seed_summary(summaries['test_top1'], arm_name(arms[0], cfg.model),
                                            arm_name(arms[1], cfg.model))
                atomic_write_json(out / 'seeds.json', {'summaries': summaries, 'command': command, 'results': {
                    s: {k: {m: v for m, v in r.items() if m != 'history'} for k, r in pair.items()}
                    for s, pair in results.items()}})
                print(f'\n{table}\n\nruns: {out}/seed<S>/{{{",".join(arms)}}} ({time.perf_counter() - t0:.0f} s in '
                      'all)', flush=True)
    finally:
        cleanup_distributed(info)
    return {'summary': summaries['test_top1'], 'summaries': summaries, 'results': results}
