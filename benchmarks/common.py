"""The one copy of what the benchmark scripts share: what machine ran them, which code they ran (commit, uncommitted
files, md5 of the sources), the command line to record, Markdown tables, and results as JSON plus Markdown.

Every script is a module of the `benchmarks` package, run from the repository root with `python -m benchmarks.<name>`,
and imports these with `from benchmarks.common import ...`. Statistics over seeds and percent cells come from
`ggam_layers.train.stats` (`mean_std`, `paired`, `fmt_pct`, `fmt_mean_std`, `fmt_paired`), trainings from
`ggam_layers.train.train`.

Work in other processes goes through one pool, `benchmarks/pool.py`: persistent workers that exit when the invoking
process is gone, each task with an optional CPU and wall-clock limit, a worker replaced when a task overruns or kills
it. `ablation.py` runs long trainings side by side in spawned workers that are reused (each keeps the generated data
between its runs), with no limit; `timm_coverage.py` runs thousands of short checks in forked workers, each with a
limit. `step_time.py`'s peak resident memory is no pool's work: it needs a fresh interpreter per measurement (nothing
inherited, not the parent's heap) and a timeout (`benchmarks/memory.py`).
"""
import hashlib
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ['REPO_ROOT', 'machine_info', 'machine_line', 'command_line', 'git_provenance', 'file_md5', 'source_md5',
           'print_training_log', 'format_value', 'markdown_table', 'write_results']

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine_info() -> Dict[str, Any]:
    """The machine and software a benchmark ran on (`ggam_layers.train.machine.machine_info`): CPU model, the CPU
    features that select kernels (AVX2, AVX-512, AMX, ...) and torch's CPU kernel set, cores, threads, versions, GPU
    name if any. Seeded results are bit-identical on one CPU type only, so every result file records them."""
    from ggam_layers.train.machine import machine_info as package_machine_info
    return package_machine_info()


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, for a Markdown header (the CPU features too, where recorded)."""
    from ggam_layers.train.machine import machine_line as package_machine_line
    return package_machine_line(dict(info))


def command_line(name: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that ran `benchmarks.<name>`: `python -m benchmarks.<name>` and its arguments (default sys.argv)."""
    return ' '.join(['python', '-m', f'benchmarks.{name}', *(sys.argv[1:] if argv is None else argv)])


def file_md5(path: Union[str, Path]) -> str:
    """The md5 of a file's bytes."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def source_md5(obj: Any) -> str:
    """The md5 of the source file defining `obj` (a module, class or function): results are only comparable when it
    is the same, e.g. for the synthetic set's generator."""
    module = obj if hasattr(obj, '__file__') else sys.modules[obj.__module__]
    return file_md5(module.__file__)


def git_provenance(paths: Sequence[str] = ('ggam_layers',), hash_files: bool = False) -> Dict[str, Any]:
    """Which code ran: the commit of the checkout and which of `paths` have uncommitted changes.

    Args:
        paths: Files or folders, relative to the repository root.
        hash_files: Also record the md5 of each of `paths` that is a file (under 'md5'; kept without git too).

    Returns:
        {'commit', 'uncommitted' (paths with changes, as git status names them), 'md5' (with hash_files)}; without git
        (not a checkout, git missing) only 'md5'.
    """
    out: Dict[str, Any] = {}
    if hash_files:
        out['md5'] = {p: file_md5(REPO_ROOT / p) for p in paths if (REPO_ROOT / p).is_file()}
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=30)
        status = subprocess.run(['git', 'status', '--porcelain', '--', *paths], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return out
    if commit.returncode == 0:
        out['commit'] = commit.stdout.strip()
        out['uncommitted'] = [line[3:] for line in status.stdout.split('\n') if line.strip()]
    return out


class _PrintHandler(logging.Handler):
    """Prints each record on the current `sys.stdout` (looked up at every record, so a swapped stream is followed)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def print_training_log() -> None:
    """Print the engine's line per epoch: `ggam_layers.train` logs it (at INFO) when `progress=False`."""
    logger = logging.getLogger('ggam_layers.train')
    if not any(isinstance(h, _PrintHandler) for h in logger.handlers):
        logger.addHandler(_PrintHandler())
    logger.setLevel(logging.INFO)


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


def markdown_table(columns: Sequence[str], rows: Sequence[Union[Mapping[str, Any], Sequence[Any]]],
                   fmt=format_value) -> List[str]:
    """The lines of a Markdown table.

    Args:
        columns: Header cells.
        rows: Mappings (cells looked up by column, formatted with `fmt`) or sequences of cells already formatted.
        fmt: Cell formatter of mapping rows.
    """
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
    for row in rows:
        cells = [fmt(row.get(c)) for c in columns] if isinstance(row, Mapping) else [str(c) for c in row]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def write_results(
        name: str,
        rows: Sequence[Mapping[str, Any]],
        meta: Mapping[str, Any],
        out_dir: str = 'benchmarks/results',
        columns: Optional[Sequence[str]] = None,
        notes: Optional[Sequence[str]] = None,
        title: Optional[str] = None,
        table_rows: Optional[Sequence[Mapping[str, Any]]] = None,
        settings: Optional[Sequence[str]] = None,
) -> List[Path]:
    """Write `<name>.json` (meta and rows) and `<name>.md` (a table of the rows, then the meta) to `out_dir`.

    Args:
        name: File stem.
        rows: One mapping per table row.
        meta: Run settings; a `machine` entry (as from `machine_info`) is named in the Markdown header, a `command`
            entry printed under it.
        out_dir: Folder, created if missing.
        columns: Table columns in order; default all keys of the rows in first-seen order.
        notes: Markdown paragraphs printed under the table.
        title: Markdown heading (default `name`).
        table_rows: The rows of the Markdown table, when they are not `rows` (e.g. cells formatted from them).
        settings: The meta keys listed under 'Settings' in the Markdown (default all but machine and command).

    Returns:
        The two paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table_rows = rows if table_rows is None else table_rows
    if columns is None:
        columns = list(dict.fromkeys(k for row in table_rows for k in row))
    json_path = out / f'{name}.json'
    with open(json_path, 'w') as f:
        json.dump({'meta': dict(meta), 'rows': [dict(r) for r in rows]}, f, indent=2, default=str)
        f.write('\n')

    lines = [f'# {title or name}', '']
    machine = meta.get('machine')
    if isinstance(machine, Mapping):
        lines += [f'Machine: {machine_line(machine)}.', '']
    if meta.get('command'):
        lines += [f'Command: `{meta["command"]}`', '']
    lines += markdown_table(columns, table_rows)
    lines.append('')
    for note in notes or ():
        lines += [note, '']
    shown = [k for k in meta if k not in ('machine', 'command')] if settings is None else settings
    rest = {k: meta[k] for k in shown if meta.get(k) not in (None, [], {})}
    if rest:
        lines += ['Settings:', '']
        for k, v in rest.items():
            text = json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else format_value(v)
            lines.append(f'- {k}: {text if len(text) <= 200 else "(in the JSON)"}')
        lines.append('')
    md_path = out / f'{name}.md'
    md_path.write_text('\n'.join(lines))
    return [json_path, md_path]
