"""The report of `benchmarks.timm_coverage`: counts and the wrap part's summary, and the Markdown of a result JSON."""
import collections
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.common import machine_line, markdown_table
from benchmarks.timm_checks import NUM_CLASSES

__all__ = ['rows_by_module', 'status_counts', 'summarise_wrap', 'markdown']


def rows_by_module(rows: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """The rows of each timm module."""
    out: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        out[r['module']].append(r)
    return out


def status_counts(rows: Sequence[Dict[str, Any]], statuses: Sequence[str]) -> Dict[str, int]:
    """How many rows have each of `statuses` (0 where none)."""
    c = collections.Counter(r['status'] for r in rows)
    return {s: c.get(s, 0) for s in statuses}


def summarise_wrap(rows: List[Dict[str, Any]], wall_s: float) -> Dict[str, Any]:
    """The wrap part's summary: counts, layouts, prefix tokens, CPU fallbacks of the probe, times, the slowest."""
    n = len(rows)
    counts = status_counts(rows, ('wrapped', 'refused', 'failed'))
    wrapped = [r for r in rows if r['status'] == 'wrapped']
    layouts = collections.Counter(r['fmt'] for r in wrapped)
    prefix = collections.Counter(r['num_prefix_tokens'] for r in wrapped if r['fmt'] == 'NLC')
    secs = sorted(r['seconds'] for r in rows)
    cpu = sum(r.get('cpu_seconds', 0.0) for r in rows)
    return {
        'total': n,
        **counts,
        'wrapped_fraction': counts['wrapped'] / n if n else 0.0,
        'layouts': dict(sorted(layouts.items())),
        'nlc_prefix_tokens': {str(k): v for k, v in sorted(prefix.items())},
        'probe_cpu_fallbacks': sum(1 for r in rows if any('probing on the CPU' in m for m in r.get('probe_log', []))),
        'wall_seconds': round(wall_s, 1),
        'model_seconds_total': round(sum(secs), 1),
        'model_seconds_median': secs[len(secs) // 2] if secs else 0.0,
        'model_cpu_seconds_total': round(cpu, 1),
        'model_cpu_seconds_median': sorted(r.get('cpu_seconds', 0.0) for r in rows)[len(rows) // 2] if rows else 0.,
        'slowest': [{'model': r['model'], 'seconds': r['seconds'], 'cpu_seconds': r.get('cpu_seconds'),
                     'status': r['status']} for r in sorted(rows, key=lambda r: -r.get('cpu_seconds', 0))[:10]],
    }


def md_escape(s: Any) -> str:
    return str(s).replace('|', '\\|').replace('\n', ' ')


def fmt_params(p: Optional[float]) -> str:
    return '' if p is None else f'{p / 1e6:.2f}M'


def status_changes(statuses: Dict[str, str]) -> str:
    changed = {k: v for k, v in statuses.items() if len(set(v.split(' -> '))) > 1}
    text = ', '.join(f'{k} {v}' for k, v in changed.items()) or 'no status changed'
    return text + (f'; {len(statuses) - len(changed)} unchanged' if changed and len(changed) < len(statuses) else '')


def markdown(data: Dict[str, Any]) -> str:
    """The Markdown report of a result JSON."""
    info = data['machine']
    lines = [
        '# GGAM coverage of timm architectures',
        '',
        f"Command: `{data['command']}`"
        + (f" (real CPU step: `{data['sample_command']}`)" if data.get('sample_command') else ''),
        '',
        f"Machine: {machine_line(info)}; {data['settings']['workers']} worker processes with one torch thread each.",
        '',
    ]
    if data.get('git', {}).get('commit'):
        dirty = data['git']['ggam_layers_uncommitted']
        lines += [f"Code: commit {data['git']['commit'][:10]}"
                  + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else '') + '.', '']
    wrap = data.get('wrap')
    sample = data.get('sample')
    if wrap:
        s = wrap['summary']
        lines += [
            '## Totals',
            '',
            f"- Wrap on the meta device (`wrap_timm_model(name, num_classes={NUM_CLASSES}, device='meta')`): "
            f"**{s['wrapped']} / {s['total']} wrapped ({100 * s['wrapped_fraction']:.1f}%)**, {s['refused']} "
            f"refused with a reason, {s['failed']} failed. Layouts of the wrapped: "
            + ', '.join(f'{k} {v}' for k, v in s['layouts'].items())
            + '; prefix tokens of NLC models: ' + ', '.join(f'{k}: {v}' for k, v in s['nlc_prefix_tokens'].items())
            + f". Wall time {s['wall_seconds'] / 60:.1f} min with {data['settings']['workers']} workers"
            + (f" (machine load average {s['load_average'][0]:.1f} at the start, {s['load_average'][1]:.1f} at the "
               'end, its own workers included)' if s.get('load_average') else '')
            + f"; CPU time in the checks {s['model_cpu_seconds_total'] / 60:.1f} min (median "
            f"{s['model_cpu_seconds_median']:.2f} s per model), i.e. about "
            f"{s['model_cpu_seconds_total'] / data['settings']['workers'] / 60:.1f} min on an idle machine.",
        ]
        for u in wrap.get('updates', []):
            lines.append(f"- Re-run of {len(u['models'])} models (`{u['command']}`, limit {u['timeout_s']:.0f} CPU s, "
                         f"{u['wall_seconds']:.0f} s): {status_changes(u['models'])}.")
    if sample:
        s = sample['summary']
        lines.append(
            f"- Real CPU step, smallest model per timm module: **{s['pass']} / {s['modules']} modules pass**, "
            f"{s['refused']} refused, {s['skipped']} skipped (too large), {s['failed']} failed; "
            f"worst closed-form vs autograd beta relative error {s['beta_rel_err_max']:.2g}. "
            f"Wall time {s['wall_seconds'] / 60:.1f} min.")
        for u in sample.get('updates', []):
            lines.append(f"- Re-run of the sample of {len(u['modules'])} modules (`{u['command']}`, "
                         f"{u['wall_seconds']:.0f} s): {status_changes(u['modules'])}.")
    lines.append('')

    if wrap:
        rows = wrap['models']
        samples = {e['module']: e for e in sample['modules']} if sample else {}
        by_module = rows_by_module(rows)
        table = []
        for module in sorted(by_module):
            mrows = by_module[module]
            c = status_counts(mrows, ('wrapped', 'refused', 'failed'))
            lay = collections.Counter(
                r['fmt'] + (f"({r['num_prefix_tokens']})" if r['fmt'] == 'NLC' else '')
                for r in mrows if r['status'] == 'wrapped')
            e = samples.get(module, {})
            size = 'x'.join(str(v) for v in e.get('img_size', [])) if e else ''
            table.append([module, len(mrows), c['wrapped'], c['refused'], c['failed'],
                          ', '.join(f'{k} {v}' for k, v in sorted(lay.items())), e.get('model', ''),
                          fmt_params(e.get('params')), size, e.get('status', '')])
        lines += ['## Per timm module', '', *markdown_table(
            ['module', 'archs', 'wrapped', 'refused', 'failed', 'layouts (NLC: prefix tokens)', 'sample model',
             'params', 'input', 'sample'], table), '']

        refused = [r for r in rows if r['status'] == 'refused']
        lines += ['## Refused architectures', '']
        if refused:
            groups: Dict[Tuple[str, str], List[str]] = collections.defaultdict(list)
            for r in refused:
                groups[(r['module'], r['reason'])].append(r['model'])
            lines += markdown_table(['module', 'models', 'reason'], [
                [module, ', '.join(models), md_escape(reason)] for (module, reason), models in sorted(groups.items())])
        else:
            lines.append('None.')
        lines.append('')

        failed = [r for r in rows if r['status'] == 'failed']
        lines += ['## Failed architectures (bugs in the wrapper)', '']
        if failed:
            lines += markdown_table(['module', 'model', 'last line of the traceback'], [
                [r['module'], r['model'], md_escape(r.get('error_last_line', ''))] for r in failed])
        else:
            lines.append('None.')
        lines.append('')

        fallbacks = [r['model'] for r in rows if any('probing on the CPU' in m for m in r.get('probe_log', []))]
        if fallbacks:
            lines += [f"Meta probe fell back to a CPU forward ({len(fallbacks)}): {', '.join(fallbacks)}.", '']
        shared = [r for r in rows if r.get('shared_param_aliases')]
        if shared:
            lines += [f'Backbones with shared modules (parameters reachable under several names; construction must '
                      f"leave all of them on the model's device) ({len(shared)}): "
                      + ', '.join(f"{r['model']} ({r['shared_param_aliases']})" for r in shared) + '.', '']
        lines += ['Slowest wrap checks (wall s, CPU s): ' + ', '.join(
            f"{r['model']} {r['seconds']:.0f}, {r.get('cpu_seconds', float('nan')):.0f}"
            for r in wrap['summary']['slowest']) + '.', '']

    if sample:
        lines += [
            '## Real CPU step per module',
            '',
            'Batch 2, random weights, train-mode `model(x)`, `forward_ggam`, `GGAMLoss` and backward (finite loss, '
            'finite gradients on `head.attn.fc1/fc2` and `head.fc`), then eval-mode closed-form beta vs autograd beta '
            f"(relative error at most {data['settings']['beta_rtol']:g}).",
            '',
        ]
        table = []
        for e in sample['modules']:
            ch = e.get('checks', {})
            fmt = e.get('fmt', '')
            if fmt == 'NLC':
                fmt += f"({e.get('num_prefix_tokens')})"
            size = 'x'.join(str(v) for v in e.get('img_size', []))
            rel = ch.get('beta_rel_err')
            table.append([
                e['module'], e.get('model', ''), fmt_params(e.get('params')), size, fmt, e.get('status', ''),
                e.get('stage', ''), '' if 'loss' not in ch else format(ch['loss'], '.4g'),
                '' if rel is None else format(rel, '.2g'), ch.get('backbone_params_without_grad', ''),
                e.get('seconds', ''), e.get('cpu_seconds', ''),
                md_escape(e.get('error_last_line') or e.get('reason') or '')])
        lines += markdown_table(
            ['module', 'model', 'params', 'input', 'layout', 'status', 'stage', 'loss', 'beta rel. err',
             'backbone params w/o grad', 'wall s', 'CPU s', 'error / reason'], table)
        lines.append('')
    return '\n'.join(lines)

