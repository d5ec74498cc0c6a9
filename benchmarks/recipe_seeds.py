"""Recipes over seeds from finished `ggam-layers train` runs: per-seed test top-1, mean ± std, paired differences.

Each `--group NAME DIR...` names one recipe and its run directories, one per seed (the seed is read from each run's
`config.json`). Every group is compared with the `--reference` group seed by seed (same seed: same data order,
augmentation and backbone initialisation), and each `--pair A B` adds a paired comparison of two groups. Nothing is
trained here: the runs come from the package's own command, so the table is what a user gets.

Example::

    python -m benchmarks.recipe_seeds --name recipe_seeds --reference plain \\
        --group plain runs/plain_s0 runs/plain_s1 --group GGAM runs/ggam_s0 runs/ggam_s1 --pair GGAM plain
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.common import machine_info, write_results
from ggam_layers.train.stats import fmt_mean_std, fmt_paired, mean_std, paired

__all__ = ['read_run', 'paired', 'summarise', 'main']


def read_run(run: Path) -> Tuple[int, float, Optional[str]]:
    """(seed, final test top-1, recipe) of a finished run directory of `ggam-layers train`."""
    results = json.loads((run / 'results.json').read_text())
    if not results.get('finished'):
        raise ValueError(f'{run}: the run did not finish (results.json has finished=false)')
    info = json.loads((run / 'config.json').read_text()).get('ggam_layers') or {}
    seed = int((info.get('train_config') or {})['seed'])
    recipe = info.get('recipe')
    return seed, float(results['test_top1']), recipe if isinstance(recipe, str) else None


def _paired(a: Dict[int, float], b: Dict[int, float]) -> Dict[str, Any]:
    """`stats.paired`, refusing two groups without a common seed."""
    d = paired(a, b)
    if not d['n']:
        raise ValueError('the two groups share no seed')
    return d


def summarise(groups: Dict[str, Dict[int, float]], reference: str, pairs: Sequence[Tuple[str, str]] = ()
              ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """One row per group (per-seed values, mean ± std, paired difference to `reference`) and one per extra pair."""
    rows = []
    for name, by_seed in groups.items():
        seeds = sorted(by_seed)
        row: Dict[str, Any] = {'recipe': name, 'seeds': seeds, 'per_seed': [by_seed[s] for s in seeds],
                               **mean_std(list(by_seed.values()))}
        if name != reference:
            row['vs_reference'] = _paired(by_seed, groups[reference])
        rows.append(row)
    extra = [{'a': a, 'b': b, **_paired(groups[a], groups[b])} for a, b in pairs]
    return rows, extra


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--group', nargs='+', action='append', required=True, metavar=('NAME', 'DIR'),
                   help='a recipe name, then its run directories (one per seed); repeat per recipe')
    p.add_argument('--reference', required=True, help='the group every other group is paired with')
    p.add_argument('--pair', nargs=2, action='append', default=[], metavar=('A', 'B'), help='also report A - B')
    p.add_argument('--out-dir', default='benchmarks/results')
    p.add_argument('--name', default='recipe_seeds', help='result file stem')
    p.add_argument('--note', action='append', default=[], help='a paragraph for the Markdown notes (repeatable)')
    args = p.parse_args(argv)

    groups: Dict[str, Dict[int, float]] = {}
    recipes: Dict[str, List[str]] = {}
    for name, *dirs in args.group:
        if not dirs:
            p.error(f'--group {name}: give its run directories')
        runs = {}
        for d in dirs:
            seed, top1, recipe = read_run(Path(d))
            if seed in runs:
                p.error(f'--group {name}: two runs with seed {seed}')
            runs[seed] = top1
            recipes.setdefault(name, []).append(recipe or d)
        groups[name] = runs
    for name in [args.reference, *(n for pair in args.pair for n in pair)]:
        if name not in groups:
            p.error(f'{name!r} is not a --group (groups: {", ".join(groups)})')
    rows, extra = summarise(groups, args.reference, [tuple(x) for x in args.pair])

    table = [{'recipe': r['recipe'], 'test top-1 (%)': fmt_mean_std(r),
              'per seed': ', '.join(f'{100 * v:.1f}' for v in r['per_seed']),
              f'vs {args.reference}': fmt_paired(r['vs_reference']) if 'vs_reference' in r else ''} for r in rows]
    notes = ['Cells: mean ± sample std over seeds; paired differences in points with (seeds ahead / seeds).']
    if extra:
        notes.append('Pairs: ' + '; '.join(f"{e['a']} - {e['b']}: {fmt_paired(e)} (per seed "
                                           + ', '.join(f'{100 * d:+.1f}' for d in e['per_seed']) + ')'
                                           for e in extra) + '.')
    notes.append('Runs: ' + '; '.join(f'{n}: ' + ' | '.join(r) for n, r in recipes.items()) + '.')
    notes += args.note
    meta = {'machine': machine_info(), 'command': 'python -m benchmarks.recipe_seeds ' + ' '.join(
        sys.argv[1:] if argv is None else argv), 'groups': rows, 'pairs': extra}
    for path in write_results(args.name, table, meta, out_dir=args.out_dir, notes=notes):
        print(f'wrote {path}')
    print('\n'.join(f"{t['recipe']}: {t['test top-1 (%)']} [{t['per seed']}] {t[f'vs {args.reference}']}"
                    for t in table))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
