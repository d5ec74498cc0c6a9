"""Crash-safe training checkpoints: a weights-only training state beside safetensors weights.

Layout of a run directory::

    OUT/config.json                 timm model config (architecture, model_args, pretrained_cfg) + the run's config
    OUT/model.safetensors           the latest weights (a hard link to the newest checkpoint's file)
    OUT/checkpoints/epoch-0007/     one complete checkpoint: model.safetensors + training_state.pt

A checkpoint directory is assembled under a temporary name and renamed in one step, so a kill at any moment leaves
either the old or the new checkpoint, never a partial one. `training_state.pt` holds only tensors and plain Python
values and is read with `torch.load(weights_only=True)`. The file writes and weight checks are `ggam_layers._files`.
"""
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError

from .._files import (
    DAMAGED_HINT,
    TMP_PREFIX,
    UMASK,
    WEIGHTS_NAME,
    CheckpointError,
    PathLike,
    atomic_write,
    fsync_dir,
    load_weights,
    save_weights,
)

__all__ = [
    'STATE_NAME', 'TRAINING_WEIGHTS_NAME', 'CHECKPOINT_DIR', 'CheckpointWriteError', 'save_checkpoint',
    'load_training_state', 'list_checkpoints', 'latest_checkpoint', 'clean_partial',
]

STATE_NAME = 'training_state.pt'
# with an EMA of the weights, model.safetensors holds the EMA and this file the weights the optimizer trains
TRAINING_WEIGHTS_NAME = 'training_weights.safetensors'
CHECKPOINT_DIR = 'checkpoints'
_EPOCH_RE = re.compile(r'^epoch-(\d+)$')


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a quota, a read-only folder); the previous checkpoint is intact."""



def list_checkpoints(out_dir: PathLike) -> List[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m and p.is_dir() and (p / WEIGHTS_NAME).is_file() and (p / STATE_NAME).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint directory of a run, or None."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def clean_partial(out_dir: PathLike) -> List[Path]:
    """Remove temporary files and directories a killed run left behind; returns what was removed."""
    removed = []
    out_dir = Path(out_dir)
    for parent in (out_dir, out_dir / CHECKPOINT_DIR):
        if not parent.is_dir():
            continue
        for p in parent.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p)
    return removed


def _link_or_copy(src: Path, dst: Path) -> None:
    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this file system
            shutil.copyfile(src, tmp)
    atomic_write(dst, write)


def save_checkpoint(
        out_dir: PathLike,
        epoch: int,
        model: nn.Module,
        state: Dict[str, Any],
        keep: int = 1,
        export: bool = True,
        extra_weights: Optional[Dict[str, nn.Module]] = None,
) -> Path:
    """Write `OUT/checkpoints/epoch-NNNN/` in one atomic step, then drop all but the newest `keep` checkpoints.

    Args:
        out_dir: Run directory.
        epoch: Number of completed epochs.
        model: The model whose weights are saved (unwrapped).
        state: Training state: tensors and plain Python values only (read back with `weights_only=True`).
        keep: Checkpoints to keep (>= 1).
        export: Also point `OUT/model.safetensors` at the new weights.
        extra_weights: More weights to save in the checkpoint, file name -> model (the trained weights beside an EMA).

    Returns:
        The checkpoint directory.
    """
    if keep < 1:
        raise ValueError(f'keep must be >= 1, got {keep}')
    root = Path(out_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f'epoch-{epoch:04d}'
    previous = latest_checkpoint(out_dir)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f'{TMP_PREFIX}epoch-{epoch:04d}.', dir=root))
        os.chmod(tmp, 0o777 & ~UMASK)
        try:
            save_weights(model, tmp / WEIGHTS_NAME, metadata={'format': 'pt', 'epoch': str(epoch)})
            for name, extra in (extra_weights or {}).items():
                save_weights(extra, tmp / name, metadata={'format': 'pt', 'epoch': str(epoch)})
            atomic_write(tmp / STATE_NAME, lambda p: torch.save(state, p))
            fsync_dir(tmp)
            if final.exists():  # a checkpoint of the same epoch from an earlier attempt: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(root)
        if export:
            _link_or_copy(final / WEIGHTS_NAME, Path(out_dir) / WEIGHTS_NAME)
    except (OSError, SafetensorError) as e:
        reason = getattr(e, 'strerror', None) or str(e)
        kept = f'the previous checkpoint {previous} is intact' if previous else 'no earlier checkpoint exists'
        raise CheckpointWriteError(
            f'could not write checkpoint {final} ({reason}): {kept}, and nothing was left half-written. Free disk '
            'space (or fix the folder\'s permissions), then continue with `ggam-layers train --resume '
            f'{out_dir}`') from e
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_training_state(path: PathLike, model: Optional[nn.Module] = None, map_location: Any = 'cpu') -> Dict[str, Any]:
    """Read a checkpoint directory: load its weights into `model` (if given) and return the training state.

    Args:
        path: A checkpoint directory, or a run directory (its newest checkpoint is used).
        model: Model to load the weights into (strict).
        map_location: Device for the state's tensors.
    """
    path = Path(path)
    if not (path / STATE_NAME).is_file():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f'no complete checkpoint in {path} (expected {CHECKPOINT_DIR}/epoch-NNNN/)')
        path = ckpt
    if model is not None:
        load_weights(model, path / WEIGHTS_NAME, what='checkpoint weights')
    state_file = path / STATE_NAME
    if state_file.stat().st_size == 0:
        raise CheckpointError(f'training state {state_file} is empty (0 bytes); {DAMAGED_HINT}')
    try:
        state = torch.load(state_file, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        raise CheckpointError(f'training state {state_file} is damaged or not a ggam-layers training state '
                              f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); {DAMAGED_HINT}') from e
    if not isinstance(state, dict) or 'epoch' not in state:
        raise CheckpointError(f'training state {state_file} is not a ggam-layers training state (no epoch); '
                              f'{DAMAGED_HINT}')
    return state
