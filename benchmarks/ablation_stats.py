"""The statistics of `benchmarks.ablation`: mean and standard deviation over seeds of each configuration, paired
differences between configurations (same seeds), and the result tables of the plan built from them."""
import dataclasses
from typing import Any, Dict, Sequence

from benchmarks.ablation_plan import make_spec, target_columns
from ggam_layers.train.stats import mean_std, paired

__all__ = ['METRICS', 'summarise', 'paired_difference', 'build_tables']

METRICS = ('test_top1', 'test_loss', 'train_top1', 'entropy_S', 'max_S_times_C', 'corr_S_beta', 'target_spread',
           'beta_abs', 'train_ggam', 'cpu_s')  # and every numeric localisation rate (loc_*)


def summarise(rows: Sequence[Dict[str, Any]], key: str) -> Dict[str, Any]:
    """Mean and standard deviation over seeds of every metric of one configuration.

    Args:
        rows: Per-run rows (any configurations).
        key: The configuration's `RunSpec.key`.
    """
    mine = sorted((r for r in rows if r['key'] == key), key=lambda r: r['seed'])
    out: Dict[str, Any] = {'key': key, 'seeds': [r['seed'] for r in mine], 'n': len(mine)}
    loc = sorted({k for r in mine for k, v in r.items() if k.startswith('loc_') and isinstance(v, (int, float))})
    for m in (*METRICS, *loc):
        ms = mean_std([r.get(m) for r in mine])
        out[m], out[m + '_std'] = ms['mean'], ms['std']
    out['test_top1_per_seed'] = [r['test_top1'] for r in mine]
    return out


def paired_difference(rows: Sequence[Dict[str, Any]], key: str, ref_key: str,
                      metric: str = 'test_top1') -> Dict[str, Any]:
    """`metric` of `key` minus that of `ref_key`, seed by seed (the same seed shares initialisation and data order).

    Returns:
        `ggam_layers.train.stats.paired`: {'seeds', 'per_seed', 'mean', 'std', 'n', 'wins' (seeds where the
        difference is > 0), 'ties'}.
    """
    return paired({r['seed']: r.get(metric) for r in rows if r['key'] == key},
                  {r['seed']: r.get(metric) for r in rows if r['key'] == ref_key})


def build_tables(rows: Sequence[Dict[str, Any]], plan: Dict[str, Any]) -> Dict[str, Any]:
    """The three result tables (lists of dicts) from the per-run rows."""
    ref = plan['sweep_reference'].key
    base = make_spec(False, False, 0.0).key
    tables: Dict[str, Any] = {'ablation': [], 'sweep': [], 'target': [], 'rescale': [], 'table2': [], 'variants': []}
    if plan.get('table2'):
        ggam = make_spec(True, True, plan['table2_lam'], plan['table2_target'])
        heads = [('plain', make_spec(False, False, 0.0)), *plan['table2'], ('attention', plan['sweep_reference']),
                 ('ggam', ggam)]
        for attention, spec in heads:
            tables['table2'].append({'attention': attention, **summarise(rows, spec.key),
                                     'vs_baseline': paired_difference(rows, spec.key, base),
                                     'ggam_vs': paired_difference(rows, ggam.key, spec.key)})
    if plan.get('variants'):
        control = plan['variants_control']
        tables['variants'].append({'variant': 'uniform', **summarise(rows, control.key)})
        for variant, spec in plan['variants']:
            tables['variants'].append({'variant': variant, **summarise(rows, spec.key),
                                       'vs_control': paired_difference(rows, spec.key, control.key)})
    for loss, spec in plan.get('rescale', []):
        unscaled = dataclasses.replace(spec, channel_rescale=False).key
        tables['rescale'].append({'ggam_loss': loss, **summarise(rows, spec.key),
                                  'vs_baseline': paired_difference(rows, spec.key, base),
                                  'vs_unscaled': paired_difference(rows, spec.key, unscaled)})
    for s, c, loss, paper, spec in plan['ablation']:
        summ = summarise(rows, spec.key)
        no_loss = make_spec(s, c, 0.0).key
        tables['ablation'].append({
            'spatial_attn': s, 'channel_attn': c, 'ggam_loss': loss, 'paper_top1': paper, **summ,
            'vs_baseline': paired_difference(rows, spec.key, base),
            'vs_no_loss': paired_difference(rows, spec.key, no_loss) if loss else None,
        })
    if plan['sweep'] or plan['target']:
        tables['reference'] = summarise(rows, ref)
    for lam, spec in plan['sweep']:
        tables['sweep'].append({'lam': lam, **summarise(rows, spec.key), 'vs_no_loss': paired_difference(
            rows, spec.key, ref)})
    for target, lam, spec in plan['target']:
        row = {'target_name': target, 'lam': lam, **target_columns(target), **summarise(rows, spec.key),
               'vs_no_loss': paired_difference(rows, spec.key, ref)}
        uni = make_spec(True, True, lam, 'uniform')
        if target != 'uniform' and any(r['key'] == uni.key for r in rows):
            row['vs_uniform'] = paired_difference(rows, spec.key, uni.key)
        tables['target'].append(row)
    return tables
