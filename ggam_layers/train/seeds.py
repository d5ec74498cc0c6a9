"""GGAM against the plain backbone over several seeds: per-seed pairs, mean ± std, paired differences, wins.

A single-seed gap between two from-scratch trainings is an anecdote: seeds move test accuracy by several points.
`train_compare_seeds` runs `train_compare` (GGAM and the plain backbone, same data, seed and recipe) once per seed
into OUT/seed<S>/, and `seed_summary` reduces the results: each seed's pair, the mean and sample standard deviation
of each model, and the paired difference GGAM - plain (same seed: same initialisation of the shared backbone, data
order and augmentation) with the number of seeds where GGAM is ahead.
"""
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .._files import atomic_write_json
from .build import build_datasets
from .compare import train_compare
from .distributed import broadcast_object, cleanup_distributed, init_distributed
from .run_dir import claim_output, default_output
from .stats import fmt_mean_std, fmt_pct, mean_std, paired

__all__ = ['seed_summary', 'format_seed_summary', 'train_compare_seeds']

_METRICS = ('test_top1', 'test_top5', 'train_top1')


def seed_summary(results: Mapping[int, Mapping[str, Mapping[str, Any]]], metric: str = 'test_top1') -> Dict[str, Any]:
    """Reduce `{seed: {'ggam': result, 'plain': result}}` (results of `train`) over seeds.

    Returns:
        {'metric', 'seeds', 'per_seed': [{'seed', 'ggam', 'plain', 'diff'}], 'ggam': {'mean', 'std'},
        'plain': {'mean', 'std'}, 'diff': {'mean', 'std'}, 'wins' (seeds with GGAM > plain), 'ties', 'n'}; the
        standard deviations are sample (n - 1) ones, None for one seed.
    """
    if not results:
        raise ValueError('results must hold at least one seed')
    per_seed: List[Dict[str, Any]] = []
    for seed in sorted(results):
        pair = results[seed]
        missing = [k for k in ('ggam', 'plain') if pair.get(k) is None or pair[k].get(metric) is None]
        if missing:
            raise ValueError(f'seed {seed}: no {metric} for {", ".join(missing)}')
        g, p = float(pair['ggam'][metric]), float(pair['plain'][metric])
        per_seed.append({'seed': seed, 'ggam': g, 'plain': p, 'diff': g - p})
    diff = paired({r['seed']: r['ggam'] for r in per_seed}, {r['seed']: r['plain'] for r in per_seed})
    return {
        'metric': metric, 'seeds': [r['seed'] for r in per_seed], 'per_seed': per_seed, 'n': len(per_seed),
        'ggam': mean_std([r['ggam'] for r in per_seed]), 'plain': mean_std([r['plain'] for r in per_seed]),
        'diff': {'mean': diff['mean'], 'std': diff['std']}, 'wins': diff['wins'], 'ties': diff['ties'],
    }


def format_seed_summary(summary: Mapping[str, Any], ggam_name: str = 'GGAM', plain_name: str = 'plain') -> str:
    """A table: one row per seed (GGAM, plain, GGAM - plain, in %), then mean ± std and the win count."""
    rows = [(f'seed {r["seed"]}', fmt_pct(r['ggam']), fmt_pct(r['plain']), fmt_pct(r['diff'], True))
            for r in summary['per_seed']]
    rows.append(('mean ± std', fmt_mean_std(summary['ggam']), fmt_mean_std(summary['plain']),
                 fmt_mean_std(summary['diff'], True)))
    head = (summary['metric'].replace('_', ' ') + ' (%)', ggam_name, plain_name, 'GGAM - plain')
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    def line(cells: Sequence[str]) -> str:
        return '  '.join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    lines = [line(head)] + [line(r) for r in rows]
    lines.append(f'GGAM ahead on {summary["wins"]} of {summary["n"]} seeds'
                 + (f' ({summary["ties"]} tied)' if summary['ties'] else '') + '; the difference is paired by seed '
                 '(same initialisation, data order and augmentation).')
    return '\n'.join(lines)


def train_compare_seeds(cfg: Any, seeds: Sequence[int], train_dataset: Any = None, eval_dataset: Any = None,
                        command: Optional[str] = None) -> Dict[str, Any]:
    """`train_compare` once per seed into OUT/seed<S>/, then the summary (printed, and written to OUT/seeds.json).

    Args:
        cfg: The run's `TrainConfig`; its `seed` is replaced by each of `seeds` and its `output` is the parent folder.
        seeds: Distinct seeds.
        train_dataset / eval_dataset: Optional datasets, shared by every run.
        command: The command line, recorded in each run's config.

    Returns:
        {'summary': `seed_summary` of test top-1, 'summaries': {metric: summary}, 'results': {seed: {...}}}.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds must be distinct integers, at least one, got {list(seeds)}')
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
                results[seed] = train_compare(sub, train_dataset, eval_dataset, command)
            summaries = {m: seed_summary(results, m) for m in _METRICS}
            if info.is_main:
                table = format_seed_summary(summaries['test_top1'], f'GGAM + {cfg.model}', f'plain {cfg.model}')
                atomic_write_json(out / 'seeds.json', {'summaries': summaries, 'command': command, 'results': {
                    s: {k: {m: v for m, v in r.items() if m != 'history'} for k, r in pair.items()}
                    for s, pair in results.items()}})
                print(f'\n{table}\n\nruns: {out}/seed<S>/{{ggam,plain}} ({time.perf_counter() - t0:.0f} s in all)',
                      flush=True)
    finally:
        cleanup_distributed(info)
    return {'summary': summaries['test_top1'], 'summaries': summaries, 'results': results}
