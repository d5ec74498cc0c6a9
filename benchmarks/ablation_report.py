"""The report of `benchmarks.ablation`: `<name>.json` (every run and every table), `<name>.md` (the tables beside the
paper's numbers, the budget, the time and the provenance) and `<name>_lambda.png` (Fig. 4)."""
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from benchmarks.ablation_budgets import Budget
from benchmarks.ablation_plan import TARGET_TEXT
from benchmarks.ablation_plot import plot_sweep
from benchmarks.ablation_stats import build_tables
from benchmarks.common import format_value, machine_line, markdown_table
from benchmarks.guidance_variants import VARIANT_TEXT
from ggam_layers.train.stats import fmt_mean_std, fmt_paired, fmt_pct

__all__ = ['TABLE2_TEXT', 'LOC_COLUMNS', 'enters_package', 'variants_section', 'seeds_text', 'runs_time_note',
           'runs_machines_note', 'write_report']

TABLE2_TEXT = {'plain': 'plain (global average pool)', 'se': 'SE (timm SEModule)', 'cbam': 'CBAM (timm CbamModule)',
               'attention': 'channel-spatial attention, no GGAM loss', 'ggam': 'GGAM (attention + loss)'}
LOC_COLUMNS = ('peak on the eye ring', 'peak on a deciding part', 'peak in part box')


def enters_package(paired_row: Dict[str, Any], n_seeds: int = 5) -> bool:
    """The rule for a variant: ahead of the control on at least 4 of 5 seeds, by more than the seed spread."""
    p = paired_row
    return bool(p.get('n', 0) >= n_seeds and p.get('wins', 0) >= n_seeds - 1 and p['mean'] is not None
                and p['std'] is not None and p['mean'] > p['std'])


def variants_section(rows: List[Dict[str, Any]], lam: float) -> List[str]:
    """Markdown of the variants against the uniform control: top-1, per seed, paired difference and the verdict."""
    lines = ['## Beyond the paper: Grad-CAM guidance variants against the uniform control (test top-1, %)', '',
             f'Each variant replaces the GGAM loss at λ = {lam:g} (`benchmarks/guidance_variants.py`, through '
             '`train(cfg, loss_fn=...)`); the control is the symmetric KL towards the uniform 1/C at the same λ, '
             'trained at the same commit with the same seeds. A variant enters the package only if it is ahead of '
             'the control on at least 4 of 5 seeds by more than the spread of the paired difference.', '']
    table = []
    for r in rows:
        per_seed = ', '.join(f'{100 * v:.2f}' for v in r['test_top1_per_seed'])
        vs = r.get('vs_control')
        verdict = '' if vs is None else ('enters the package' if enters_package(vs) else 'stays a reported result')
        text = VARIANT_TEXT.get(r['variant'], 'control: symmetric KL towards the uniform 1/C, no Grad-CAM')
        table.append([f'`{r["variant"]}`: {text}', _pct(r), per_seed, fmt_paired(vs) if vs else '',
                      _num(r['entropy_S'], r['entropy_S_std'], 4), verdict, *_loc_cells(r)])
    lines += markdown_table(['row', 'top-1', 'per seed', 'Δ vs control (seeds ahead)', 'H(S)', 'verdict',
                             *LOC_COLUMNS], table)
    return lines + ['']


def _pct(r: Dict[str, Any], metric: str = 'test_top1') -> str:
    """'mean ± std' in percent of a `summarise` metric."""
    return fmt_mean_std({'mean': r[metric], 'std': r[f'{metric}_std']}, empty='')


def _num(mean: Optional[float], std: Optional[float] = None, digits: int = 3) -> str:
    if mean is None:
        return ''
    return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def _mark(flag: bool) -> str:
    return '✓' if flag else '×'


def _analysis_cells(r: Dict[str, Any]) -> List[str]:
    """H(S), corr(S, β), target spread and the localisation cells of a target-table row."""
    return [_num(r['entropy_S'], r['entropy_S_std'], 4), _num(r['corr_S_beta'], r['corr_S_beta_std']),
            _num(r['target_spread'], None, 4), *_loc_cells(r)]


def _loc_cells(r: Dict[str, Any]) -> List[str]:
    def pct(v: Optional[float]) -> str:
        return fmt_pct(v, empty='–')

    def pair(kind: str) -> str:
        return f'{pct(r.get(f"loc_T_{kind}"))} / {pct(r.get(f"loc_cam_{kind}"))}'

    def cell(kind: str) -> str:
        return f'{pair(kind)} ({pct(r.get(f"loc_chance_{kind}"))}; {pct(r.get(f"loc_center_{kind}"))})'

    return [cell('eye_ring_half_stride'), cell('decisive_half_stride'), cell('box_strict')]


def seeds_text(rows: List[Dict[str, Any]], n_seeds: int) -> str:
    """How many seeds a cell averages: the budget's, or each row's own where some rows lack seeds (a partial study)."""
    counts = sorted(set(Counter(r['key'] for r in rows).values()))
    if not counts or counts == [n_seeds]:
        return f'{n_seeds} seeds'
    return (f'the seeds each row has finished ({", ".join(map(str, counts))} of the budget\'s {n_seeds}: a partial '
            'study; a Δ counts the seeds both rows have)')


def runs_time_note(meta: Dict[str, Any]) -> str:
    """The runs' own CPU time, and a warning where the invocations logged cover less than the runs reported."""
    runs_cpu = meta.get('cpu_s_runs')
    if runs_cpu is None:
        return ''
    note = f'The runs themselves: {runs_cpu:.0f} CPU s, summed over the runs.'
    if meta['cpu_s'] < runs_cpu:
        note += (' The invocations logged in the work folder account for less: a study still training when this '
                 'report was written, or one stopped before its end (an invocation is logged when it ends; its '
                 'finished runs are reused by the next).')
    return note


def runs_machines_note(rows: Sequence[Dict[str, Any]], machine: Dict[str, Any]) -> str:
    """The machines the runs trained on, where any differs from `machine` (the report's): a study resumed on another
    machine. Each machine with its number of runs, and the runs whose row does not name one; '' where they all match
    (the thread count aside) or none is named."""
    def identity(info: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in info.items() if k != 'torch_threads'}

    named = [r['machine'] for r in rows if r.get('machine')]
    unnamed = len(rows) - len(named)
    if not named or (not unnamed and all(identity(m) == identity(machine) for m in named)):
        return ''
    counts = Counter(machine_line(m) for m in named)
    parts = [f'{line} ({n} run{"s" if n != 1 else ""})' for line, n in counts.items()]
    if unnamed:
        parts.append(f'not named in the row ({unnamed} run{"s" if unnamed != 1 else ""}, written before rows named '
                     'their machine)')
    return 'The runs trained on: ' + '; '.join(parts) + '.'


def write_report(name: str, out_dir: Path, rows: List[Dict[str, Any]], plan: Dict[str, Any], budget: Budget,
                 meta: Dict[str, Any]) -> List[Path]:
    """Write `<name>.json`, `<name>.md` and `<name>_lambda.png`; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = build_tables(rows, plan)
    png = plot_sweep(tables, out_dir / f'{name}_lambda.png',
                     f'λ sensitivity on the synthetic set ({budget.backbone}, {budget.img_size} px, '
                     f'{"fine-tuned, " if budget.pretrained else ""}{len(budget.seeds)} seeds, mean ± std)',
                     budget.ablation_target)
    json_path = out_dir / f'{name}.json'
    json_path.write_text(json.dumps({'meta': meta, 'budget': dataclasses.asdict(budget), 'tables': tables,
                                     'runs': rows}, indent=1, default=str) + '\n')

    n_seeds = len(budget.seeds)
    lines = [f'# {name}: GGAM ablation, λ sensitivity and target scale on the synthetic set', '',
             f'Machine: {machine_line(meta["machine"])}. {runs_machines_note(rows, meta["machine"])}'.rstrip(), '',
             f'Command: `{meta["command"]}`', '',
             f'Budget (every run): {budget.describe()}; final feature map '
             f'{", ".join(sorted({str(r["loc_feature_grid"]) for r in rows if r.get("loc_feature_grid")})) or "?"}. '
             'Trained with `ggam_layers.train.train` (preset `synthetic`: flip augmentation, weight decay '
             f'{budget.weight_decay if budget.weight_decay is not None else 0.05:g}, cosine schedule after half an '
             "epoch of warm-up); top-1 is the engine's evaluation after the last epoch.", '',
             f'Time: {meta["runs"]} runs, wall {meta["wall_s"]:.0f} s, CPU {meta["cpu_s"]:.0f} s (all processes; '
             f'{len(meta["invocations"])} invocation(s), {meta["jobs"]} job(s) x {meta["threads"]} thread(s)); '
             f'CPU / 2 = {meta["cpu_s"] / 2:.0f} s estimates the wall time on 2 otherwise idle cores (the wall time '
             f'is longer where other processes share the cores). {runs_time_note(meta)}', '',
             f'Cells: mean ± standard deviation over {seeds_text(rows, n_seeds)}. Δ: paired difference to the '
             'reference row trained with the same seeds, in points, with (seeds where it is > 0 / seeds). H(S): '
             'entropy of the channel attention over log C (1 = uniform).', '',
             'Peaks (`benchmarks/localization.py`, % of test images), T / CAM: the peak cell of the spatial '
             'attention T / of the Grad-CAM map. "On the eye ring": the peak cell touches the eye ring (on the head, '
             'away from the body: the part a body-centre prior cannot find). "On a deciding part": the peak cell '
             'touches the wing bar or the eye '
             'ring (their boxes grown by half a feature cell), the two parts whose colours decide the class. "In part '
             'box": the peak lies in the box around all parts (beak, crest, eye ring, wing bar), strict. In brackets '
             'the two controls: the rate of a uniformly drawn feature cell, then that of a map that always peaks on '
             "the cell of the bird's body centre (it finds the bird but no part). A map guided to the parts beats "
             'both.', '']
    if tables['table2']:
        lines += ['## Table 2: GGAM against SE and CBAM at the same place (test top-1, %)', '',
                  'Each attention sits after the last stage, before the pooling, on the same backbone, data, recipe '
                  "and seeds. SE and CBAM are timm.layers' `SEModule` and `CbamModule` (`attention='se'` / "
                  "`'cbam'`), trained with cross-entropy; GGAM has the loss at λ = "
                  f"{budget.lam:g} with the `{budget.ablation_target}` target.", '']
        lines += markdown_table(
            ['head', 'top-1', 'Δ vs plain', 'GGAM − this row', *LOC_COLUMNS],
            [[TABLE2_TEXT.get(r['attention'], r['attention']), _pct(r), fmt_paired(r['vs_baseline']),
              fmt_paired(r['ggam_vs']) if r['attention'] != 'ggam' else '', *_loc_cells(r)]
             for r in tables['table2']])
        lines.append('')
    if tables['ablation']:
        lines += ['## Table 3: ablation (test top-1, %)', '']
        lines += markdown_table(
            ['Spatial attention', 'Channel attention', 'GGAM loss', 'paper (CUB-200-2011, ResNet-50)', 'ours',
             'Δ vs baseline', 'Δ vs same row without loss', 'H(S)', *LOC_COLUMNS],
            [[_mark(r['spatial_attn']), _mark(r['channel_attn']), _mark(r['ggam_loss']), f'{r["paper_top1"]:.2f}',
              _pct(r), fmt_paired(r['vs_baseline']), fmt_paired(r['vs_no_loss']) if r['vs_no_loss'] else '',
              _num(r['entropy_S'], None, 4), *_loc_cells(r)] for r in tables['ablation']])
        lines += ['', f'GGAM loss rows: λ = {budget.lam:g}, target `{budget.ablation_target}` '
                  f'({TARGET_TEXT[budget.ablation_target]}). Without channel attention S is the constant 1/C: the '
                  'loss is then a constant without gradient, and those rows train exactly as the rows without it, so '
                  'they show the same runs (the package documents this; the paper reports gains there, which its '
                  'method as described cannot give).', '']
    if tables['rescale']:
        lines += ['## The channel-only collapse and the C * S rescale (test top-1, %)', '',
                  'Without the spatial map, eq. 1 hands the classifier S * A: with a softmax S that is A at 1/C '
                  'scale on average. `channel_rescale` hands it C * S * A instead (an SE-like gain: a uniform S '
                  'passes A unchanged).', '']
        lines += markdown_table(
            ['GGAM loss', 'C * S * A', 'Δ vs baseline', 'Δ vs S * A (same loss)', 'H(S)'],
            [[_mark(r['ggam_loss']), _pct(r), fmt_paired(r['vs_baseline']), fmt_paired(r['vs_unscaled']),
              _num(r['entropy_S'], r['entropy_S_std'], 4)] for r in tables['rescale']])
        lines.append('')
    if tables['sweep']:
        ref = tables['reference']
        ref_cell = _pct(ref)
        lines += ['## Fig. 4: λ sensitivity of the full model (test top-1, %)', '',
                  f'Reference, channel-spatial attention without the GGAM loss: {ref_cell} '
                  f'(H(S) {_num(ref["entropy_S"], ref["entropy_S_std"], 4)}).', '']
        lines += markdown_table(
            ['λ', 'top-1', 'Δ vs no loss', 'H(S)', 'corr(S, β)', 'train L_GGAM'],
            [[f'{r["lam"]:g}', _pct(r), fmt_paired(r['vs_no_loss']), _num(r['entropy_S'], r['entropy_S_std'], 4),
              _num(r['corr_S_beta'], r['corr_S_beta_std']), format_value(r['train_ggam'])] for r in tables['sweep']])
        if png is not None:
            lines += ['', f'![λ sensitivity]({png.name})']
        lines.append('')
    if tables['target']:
        ref = tables['reference']
        none = ['none (no GGAM loss)', '', '', '', '', '0', _pct(ref), '', '']
        lines += ['## Target scale (docs/design.md)', '']
        lines += markdown_table(
            ['target', 'squash', 'KL', 'target norm', 'temperature', 'λ', 'top-1', 'Δ vs no loss',
             'Δ vs uniform control', 'H(S)', 'corr(S, β)', 'target spread', *LOC_COLUMNS],
            [[*none, *_analysis_cells(ref)]]
            + [[r['target_name'], r['squash'], r['kl'], r['target_norm'], format_value(r['cam_temperature']),
                f'{r["lam"]:g}', _pct(r), fmt_paired(r['vs_no_loss']),
                fmt_paired(r['vs_uniform']) if r.get('vs_uniform') else '', *_analysis_cells(r)]
               for r in tables['target']])
        lines += ['', 'Targets: ' + '; '.join(f'`{k}`: {TARGET_TEXT[k]}' for k in budget.targets) + '. '
                  'Target spread: C * (max - min) of the target distribution beta~ (0: uniform; for the no-loss row, '
                  'the literal target). corr(S, β): Pearson correlation over channels per test image, averaged. '
                  f'Mean |β| of the full model without the loss: {format_value(ref["beta_abs"])}.', '']
    if tables['variants']:
        lines += variants_section(tables['variants'], budget.lam)
    prov = meta.get('provenance', {})
    trained = sorted({r['provenance'].get('commit', '?')[:7] for r in rows if r.get('provenance')})
    lines += ['Settings:', '', f'- budget: `{json.dumps(dataclasses.asdict(budget))}`',
              f'- runs trained at commit(s) {", ".join(trained) or "not recorded (rows older than this field)"}',
              f'- this report: commit {prov.get("commit", "?")}; uncommitted changes to '
              f'{prov.get("uncommitted") or "none"} of the files that decide the numbers; md5 of '
              'ggam_layers/data/synthetic.py '
              f'{prov.get("md5", {}).get("ggam_layers/data/synthetic.py", "?")}',
              f'- per-run rows and every table: `{json_path.name}`', '']
    md_path = out_dir / f'{name}.md'
    md_path.write_text('\n'.join(lines))
    return [p for p in (json_path, md_path, png) if p is not None]
