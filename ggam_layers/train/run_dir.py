"""The run directory of `ggam-layers train`: its default name, its lock, the files a run owns, and its saved
config."""
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, List

from .._files import CONFIG_NAME, WEIGHTS_NAME
from .._lock import LOCK_NAME, OutputInUse, folder_lock
from .checkpoint import CHECKPOINT_DIR, clean_partial
from .config import RESUME_MUTABLE_FIELDS, TrainConfig
from .distributed import DistInfo, broadcast_object

__all__ = ['RESULTS_NAME', 'RUN_ARTEFACTS', 'default_output', 'claim_output', 'is_nonempty_dir', 'clear_run_dir',
           'config_differences', 'read_run_config']

RESULTS_NAME = 'results.json'
RUN_ARTEFACTS = (CONFIG_NAME, WEIGHTS_NAME, CHECKPOINT_DIR, 'metrics.csv', 'metrics.jsonl', RESULTS_NAME, 'tensorboard',
                 'per_class.csv', 'confusion.csv', 'confusion.png', 'eval')


def default_output(cfg: TrainConfig, suffix: str = '') -> str:
    stamp = time.strftime('%Y%m%d-%H%M%S')
    model = cfg.model.replace('/', '_').replace(':', '_')
    dataset = cfg.dataset.replace('/', '_').replace(':', '_')
    return str(Path('output') / 'train' / f'{stamp}-{dataset}-{model}{suffix}')


@contextmanager
def claim_output(out: Path, info: DistInfo) -> Iterator[None]:
    """Own the output folder `out` for the with-block (`_lock.folder_lock`): rank 0 of a DDP job takes the lock,
    and when another run holds it every rank raises `OutputInUse` at once, before any work."""
    lock = folder_lock(out, 'output directory', 'another --output') if info.is_main else None
    error = None
    if lock is not None:
        try:
            lock.acquire()
        except BaseException as e:
            error = e
    failed = broadcast_object(None if error is None else (isinstance(error, OutputInUse), str(error)), info)
    if error is not None:
        raise error
    if failed is not None:  # another rank: rank 0 says why
        in_use, message = failed
        raise OutputInUse(message) if in_use else RuntimeError(f'rank 0 could not lock {out}: {message}')
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def is_nonempty_dir(path: Path) -> bool:
    """Whether `path` is a folder holding anything but its lock file."""
    return path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir())


def clear_run_dir(path: Path) -> None:
    """Remove the files a run writes (and leftovers of killed writes); anything else in the folder stays."""
    for name in RUN_ARTEFACTS:
        p = path / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    clean_partial(path)


def config_differences(saved: TrainConfig, new: TrainConfig) -> List[str]:
    a, b = asdict(saved), asdict(new)
    return [k for k in a if k not in RESUME_MUTABLE_FIELDS and k != 'preset' and _norm(a[k]) != _norm(b[k])]


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v))


def read_run_config(out: Path) -> Dict[str, Any]:
    path = out / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing: {out} is not a ggam-layers run directory')
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path} is damaged (not valid JSON: {e}); restore it from a copy (it is the run\'s settings '
                         'and model config, written once when the run starts)') from e
    if not isinstance(config, dict):
        raise ValueError(f'{path} must hold a JSON object, got {type(config).__name__}: it is not a ggam-layers run')
    info = config.get('ggam_layers') or {}
    if 'train_config' not in info:
        raise ValueError(f'{path} has no ggam_layers.train_config: it was not written by ggam-layers train')
    return config
