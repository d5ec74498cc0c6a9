"""Helpers shared by the benchmark scripts: what machine ran them, and writing results as JSON plus Markdown.

Import from a script in this folder with `from common import machine_info, write_results` (the script's folder is
on `sys.path`), or from the repository root with `from benchmarks.common import ...`.
"""
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ['machine_info', 'machine_line', 'write_results', 'format_value']


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown'


def machine_info() -> Dict[str, Any]:
    """The machine and software a benchmark ran on: CPU model, cores, threads, versions, GPU name if any."""
    import torch

    info: Dict[str, Any] = {
        'cpu': _cpu_model(),
        'cpu_cores': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
    }
    try:
        import timm
        info['timm'] = timm.__version__
    except ImportError:
        info['timm'] = None
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
        info['gpu_count'] = torch.cuda.device_count()
        info['cuda'] = torch.version.cuda
    else:
        info['gpu'] = None
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, for a Markdown header."""
    where = f'{info.get("gpu")} GPU, ' if info.get('gpu') else ''
    return (f'{where}{info.get("cpu")} ({info.get("cpu_cores")} cores, {info.get("torch_threads")} torch threads), '
            f'torch {info.get("torch")}, timm {info.get("timm")}, Python {info.get("python")}')


def format_value(v: Any) -> str:
    """A table cell: floats to 4 significant digits, None as an empty cell."""
    if v is None:
        return ''
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return 'nan'
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f'{v:.3e}'
        return f'{v:.4g}'
    return str(v).replace('|', '\\|')


def write_results(
        name: str,
        rows: Sequence[Mapping[str, Any]],
        meta: Mapping[str, Any],
        out_dir: str = 'benchmarks/results',
        columns: Optional[Sequence[str]] = None,
        notes: Optional[Sequence[str]] = None,
) -> List[Path]:
    """Write `<name>.json` (meta and rows) and `<name>.md` (a table of the rows, then the meta) to `out_dir`.

    Args:
        name: File stem.
        rows: One mapping per table row.
        meta: Run settings; a `machine` entry (as from `machine_info`) is named in the Markdown header.
        out_dir: Folder, created if missing.
        columns: Table columns in order; default all keys of the rows in first-seen order.
        notes: Markdown paragraphs printed under the table.

    Returns:
        The two paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    json_path = out / f'{name}.json'
    with open(json_path, 'w') as f:
        json.dump({'meta': dict(meta), 'rows': [dict(r) for r in rows]}, f, indent=2, default=str)
        f.write('\n')

    lines = [f'# {name}', '']
    machine = meta.get('machine')
    if isinstance(machine, Mapping):
        lines += [f'Machine: {machine_line(machine)}.', '']
    if meta.get('command'):
        lines += [f'Command: `{meta["command"]}`', '']
    lines.append('| ' + ' | '.join(columns) + ' |')
    lines.append('| ' + ' | '.join('---' for _ in columns) + ' |')
    for row in rows:
        lines.append('| ' + ' | '.join(format_value(row.get(c)) for c in columns) + ' |')
    lines.append('')
    for note in notes or ():
        lines += [note, '']
    rest = {k: v for k, v in meta.items() if k not in ('machine', 'command') and v not in (None, [], {})}
    if rest:
        lines += ['Settings:', '']
        for k, v in rest.items():
            text = json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else format_value(v)
            lines.append(f'- {k}: {text if len(text) <= 200 else "(in the JSON)"}')
        lines.append('')
    md_path = out / f'{name}.md'
    md_path.write_text('\n'.join(lines))
    return [json_path, md_path]
