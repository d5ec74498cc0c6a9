"""The targets of the single-pass step (`benchmarks.step_time`), each checked against the measured rows: GGAM
against plain (step, memory, inference, head), the authors' step against GGAM, and on CUDA the fused head's."""
from typing import Any, Dict, List, Optional

__all__ = ['targets']


def targets(
        train_rows: List[Dict], infer_rows: List[Dict], head_rows: List[Dict], device: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """The targets of the single-pass step, per setting, from the measured rows (eager configurations).

    On CUDA also those of the fused head (issue 14): head + loss <= 1 ms, step <= 1.01x plain eager and compiled,
    inference <= 1.005x, memory <= 1.01x.
    """
    out = []
    for setting in dict.fromkeys(r['setting'] for r in train_rows):
        tr = {r['method']: r for r in train_rows if r['setting'] == setting}
        inf = {r['method']: r for r in infer_rows if r['setting'] == setting}
        hd = {r['part']: r for r in head_rows if r['setting'] == setting}
        checks = []
        if 'plain' in tr and 'ggam' in tr:
            checks.append(('GGAM / plain step time', tr['ggam']['median_s'] / tr['plain']['median_s'], 1.05, 'max'))
            if 'cpu_median_s' in tr['ggam']:
                checks.append(('GGAM / plain step CPU time', tr['ggam']['cpu_median_s'] / tr['plain']['cpu_median_s'],
                               1.05, 'max'))
            if tr['ggam'].get('mem_ratio') is not None:
                checks.append(('GGAM / plain training memory', tr['ggam']['mem_ratio'], 1.05, 'max'))
            if tr['ggam'].get('peak_ratio') is not None:
                checks.append(('GGAM / plain peak memory (process)', tr['ggam']['peak_ratio'], 1.05, 'max'))
        if 'authors' in tr and 'ggam' in tr:
            checks.append(("authors' / GGAM step time", tr['authors']['median_s'] / tr['ggam']['median_s'], 1.5,
                           'min'))
            if 'cpu_median_s' in tr['ggam']:
                checks.append(("authors' / GGAM step CPU time",
                               tr['authors']['cpu_median_s'] / tr['ggam']['cpu_median_s'], 1.5, 'min'))
        if 'plain' in inf and 'ggam' in inf:
            checks.append(('GGAM / plain inference', inf['ggam']['median_s'] / inf['plain']['median_s'], 1.02, 'max'))
            if 'cpu_median_s' in inf['ggam']:
                checks.append(('GGAM / plain inference CPU time',
                               inf['ggam']['cpu_median_s'] / inf['plain']['cpu_median_s'], 1.02, 'max'))
        if 'plain' in tr and 'plain_head' in hd and 'ggam_head' in hd:
            key = 'cpu_median_s' if 'cpu_median_s' in hd['ggam_head'] else 'median_s'
            extra = (hd['ggam_head'][key] - hd['plain_head'][key]) / tr['plain'][key]
            checks.append((f'1 + (GGAM head - plain head) / plain step ({key[:-2]})', 1 + extra, 1.05, 'max'))
        if device == 'cuda':
            if 'ggam_head' in hd:
                checks.append(('fused GGAM head + loss fwd+bwd, ms', hd['ggam_head']['median_s'] * 1e3, 1.0, 'max'))
            if 'plain' in tr and 'ggam' in tr:
                checks.append(('fused: GGAM / plain step time', tr['ggam']['median_s'] / tr['plain']['median_s'],
                               1.01, 'max'))
                if tr['ggam'].get('mem_ratio') is not None:
                    checks.append(('fused: GGAM / plain training memory', tr['ggam']['mem_ratio'], 1.01, 'max'))
            if 'plain (compiled)' in tr and 'ggam (compiled)' in tr:
                checks.append(('fused: compiled GGAM / compiled plain step time',
                               tr['ggam (compiled)']['median_s'] / tr['plain (compiled)']['median_s'], 1.01, 'max'))
            if 'plain' in inf and 'ggam' in inf:
                checks.append(('fused: GGAM / plain inference', inf['ggam']['median_s'] / inf['plain']['median_s'],
                               1.005, 'max'))
        for name, value, limit, kind in checks:
            met = value <= limit if kind == 'max' else value >= limit
            out.append({'setting': setting, 'target': name, 'value': value,
                        'limit': ('<= ' if kind == 'max' else '>= ') + str(limit), 'met': met})
    return out

