"""The result files of `benchmarks.step_time`: JSON and Markdown, the training table, then the targets, inference,
head, kernels, gradient check and host sync."""
import json
from pathlib import Path
from typing import Any, Dict, List

from benchmarks.common import markdown_table, write_results
from benchmarks.step_targets import targets

__all__ = ['write_report']


def write_report(name: str, out_dir: str, meta: Dict[str, Any], train_rows: List[Dict[str, Any]]) -> List[Path]:
    """JSON and Markdown: the training table, then targets, inference, head, gradient check and host sync."""
    infer_rows, head_rows = meta.get('inference') or [], meta.get('head') or []
    grad_rows, sync = meta.get('grad_check') or [], meta.get('host_sync')
    meta = dict(meta, targets=targets(train_rows, infer_rows, head_rows, meta.get('device')))
    cols = ['setting', 'method', 'median_s', 'min_s', 'max_s', 'iqr_s', 'ratio_vs_plain', 'ratio_vs_plain_same_mode',
            'cpu_median_s', 'cpu_ratio_vs_plain', 'mem_mb', 'mem_ratio', 'step_mem_mb', 'step_mem_ratio', 'peak_mb',
            'peak_ratio']
    notes = [_table(meta['targets'], ['setting', 'target', 'value', 'limit', 'met'], 'Targets')]
    if infer_rows:
        notes.append(_table(infer_rows, ['setting', 'method', 'median_s', 'min_s', 'max_s', 'iqr_s', 'ratio_vs_plain',
                                         'cpu_median_s', 'cpu_ratio_vs_plain'],
                            'Inference, `model(x)` in eval mode under no_grad'))
    if head_rows:
        notes.append(_table(head_rows, ['setting', 'part', 'features', 'uses_fused', 'median_s', 'min_s', 'max_s',
                                        'iqr_s', 'cpu_median_s', 'a_passes', 'bytes_moved_mb', 'achieved_gb_s'],
                            'Head + loss alone, forward + backward (bytes moved: the passes over A of the fused path)'))
    kernel_rows = meta.get('kernels') or []
    if kernel_rows:
        notes.append(_table(kernel_rows, ['setting', 'kernel', 'features', 'a_passes', 'bytes_moved_mb', 'median_s',
                                          'iqr_s', 'achieved_gb_s'],
                            'Fused kernels alone (bytes moved: passes over A x its size; achieved = bytes / time)'))
    if grad_rows:
        notes.append(_table(grad_rows, ['setting', 'method', 'loss', 'grad_rel_diff', 'params_off'],
                            '`.grad` before the optimizer step against the exact gradient of the loss '
                            '(relative norm difference; params_off: parameter tensors whose `.grad` is off, of those '
                            'with a non-zero gradient)'))
    if sync is not None:
        notes.append('Host sync check (`torch.cuda.set_sync_debug_mode("error")`): ' + json.dumps(sync))
    return write_results(name, train_rows, meta, out_dir, columns=[c for c in cols if any(
        c in r for r in train_rows)], notes=notes)



def _table(rows: List[Dict[str, Any]], cols: List[str], title: str) -> str:
    return '\n'.join([f'{title}:', '', *markdown_table(cols, rows)])

