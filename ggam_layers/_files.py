"""The package's files: their names, atomic writes, and safetensors weights read and written with checks.

Every file is written to a temporary name in its final directory, flushed and fsynced, then moved into place with
`os.replace`, so a kill at any moment leaves either the old or the new file, never a part of one. Reading checks a
weights file before trusting it: an empty, truncated, pickled or otherwise foreign file, or weights of another
architecture, raise `CheckpointError` (a ValueError) naming the file, what is wrong and what to do.

This module sits below the layers' users (hub/, train/, data/) and imports none of the package.
"""
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    'PRETRAINED_DIR', 'CONFIG_NAME', 'WEIGHTS_NAME', 'README_NAME', 'DATA_CONFIG_KEYS', 'TMP_PREFIX', 'PICKLE_SUFFIXES',
    'CONVERT_HINT', 'DAMAGED_HINT', 'CheckpointError', 'atomic_write', 'atomic_write_json', 'atomic_write_text',
    'check_safetensors', 'save_weights', 'load_weights', 'refuse_pickle', 'UMASK', 'fsync_dir',
]

TMP_PREFIX = '.tmp-'
# the weights the package ships: the embedded models and the synthetic_pretrain backbone
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrained')
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
README_NAME = 'README.md'
# the keys of timm's data config that a config.json's pretrained_cfg records
DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.ckpt', '.tar', '.pkl', '.pickle')
CONVERT_HINT = (
    "convert it once, in a process you trust: `import torch, safetensors.torch; sd = torch.load(PATH, "
    "map_location='cpu', weights_only=True); safetensors.torch.save_file(sd.get('state_dict', sd), "
    "'model.safetensors')`")
DAMAGED_HINT = ('restore it from a good copy, or retrain: `ggam-layers train --resume RUN` starts again from the '
                'newest intact checkpoint in RUN/checkpoints/')
_MAX_HEADER = 100 * 1024 * 1024  # safetensors refuses larger headers too
UMASK = os.umask(0o022)  # the process's umask, read once (reading it means setting it)
os.umask(UMASK)

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
    """fsync the directory `path` (so a rename inside it is durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write_fn: Callable[[str], None]) -> Path:
    """Write a file so that `path` holds either its old content or the complete new one, never a part.

    Args:
        path: Destination file.
        write_fn: Called with a temporary path in the same directory; it must create that file.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'{TMP_PREFIX}{path.name}.', dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp creates 0600; give the file the usual permissions
    try:
        write_fn(tmp)
        with open(tmp, 'rb+') as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text file."""
    def write(tmp: str) -> None:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
    return atomic_write(path, write)


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """`atomic_write` of a JSON file (indented, keys in insertion order)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + '\n')


def _state_dict_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    # safetensors wants contiguous tensors that share no memory (channels_last weights are not contiguous)
    return {k: v.detach().to('cpu', copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Save `model.state_dict()` to a safetensors file, atomically.

    Args:
        model: The model (unwrap DDP first).
        path: Destination `.safetensors` file.
        metadata: String key/values stored in the file's header.
    """
    tensors = _state_dict_tensors(model)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {'format': 'pt'}))


class CheckpointError(ValueError):
    """A checkpoint or weights file that cannot be used: missing, empty, truncated, of another format, or holding the
    weights of another architecture. The message names the file, what is wrong and the fix."""


def _foreign_format(head: bytes) -> Optional[str]:
    if head.startswith(b'PK\x03\x04'):
        return 'a torch.save file (zip archive of pickles)'
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return 'a pickle file'
    if head.startswith(b'\x89HDF'):
        return 'an HDF5 (Keras) file'
    if head.lstrip()[:1] in (b'{', b'['):
        return 'a JSON text file'
    return None


def check_safetensors(path: PathLike, what: str = 'weights file') -> Dict[str, Any]:
    """Check that `path` is a complete safetensors file without reading its tensors; returns its header.

    Args:
        path: The file.
        what: How errors name it ('weights file', '--pretrained-file', ...).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is empty, truncated, a pickle or another format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} {path} does not exist')
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f'{what} {path} is empty (0 bytes): it was never written completely; {DAMAGED_HINT}')
    with open(path, 'rb') as f:
        head = f.read(8)
        foreign = _foreign_format(head)
        if foreign is not None or path.suffix in PICKLE_SUFFIXES:
            kind = foreign or f'a {path.suffix} file'
            raise CheckpointError(f'{what} {path} is {kind}, not safetensors: ggam_layers reads safetensors only (a '
                                  f'pickle can run code when loaded); {CONVERT_HINT.replace("PATH", repr(str(path)))}')
        if size < 8:
            raise CheckpointError(f'{what} {path} is truncated: {size} bytes, shorter than the 8-byte safetensors '
                                  f'header length; {DAMAGED_HINT}')
        (n,) = struct.unpack('<Q', head)
        if n > _MAX_HEADER:
            raise CheckpointError(f'{what} {path} is not a safetensors file (its first 8 bytes give a header of {n} '
                                  f'bytes); pass a model.safetensors written by ggam-layers or timm')
        if 8 + n > size:
            raise CheckpointError(f'{what} {path} is truncated: {size} bytes, but its header alone needs {8 + n}; '
                                  f'{DAMAGED_HINT}')
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise CheckpointError(f'{what} {path} is not a safetensors file (its header is not a JSON object); pass a '
                              'model.safetensors written by ggam-layers or timm')
    try:
        end = max((int(v['data_offsets'][1]) for k, v in header.items() if k != '__metadata__'), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise CheckpointError(f'{what} {path} has a damaged safetensors header (a tensor without data_offsets); '
                              f'{DAMAGED_HINT}') from None
    if 8 + n + end > size:
        raise CheckpointError(f'{what} {path} is truncated: {size} bytes on disk, its header describes '
                              f'{8 + n + end} (cut off while copying or writing?); {DAMAGED_HINT}')
    return header


def _shape_report(own: Dict[str, Any], got: Dict[str, Any]) -> str:
    def first(items: List[str]) -> str:
        return ', '.join(items[:3]) + (f' (+{len(items) - 3} more)' if len(items) > 3 else '')
    wrong = [f'{k} (file {tuple(got[k].shape)}, model {tuple(own[k].shape)})' for k in own
             if k in got and tuple(got[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in got]
    extra = [k for k in got if k not in own]
    parts = ([f'{len(wrong)} shapes differ: {first(wrong)}'] if wrong else []) + (
        [f'{len(missing)} keys missing: {first(missing)}'] if missing else []) + (
        [f'{len(extra)} unexpected keys: {first(extra)}'] if extra else [])
    return '; '.join(parts)


def load_weights(model: nn.Module, path: PathLike, strict: bool = True, what: str = 'weights file') -> nn.Module:
    """Load a safetensors state dict into `model` (in place; memory formats of the parameters are kept).

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: The file is damaged or foreign, or (strict) its keys or shapes do not fit `model`; the model
            is left unchanged then.
    """
    check_safetensors(path, what)
    try:
        state = load_file(str(path), device='cpu')
    except SafetensorError as e:
        raise CheckpointError(f'{what} {path} is damaged ({e}); {DAMAGED_HINT}') from e
    own = model.state_dict()
    report = _shape_report(own, state) if strict else _shape_report(
        {k: v for k, v in own.items() if k in state}, {k: v for k, v in state.items() if k in own})
    if report:
        raise CheckpointError(
            f'{what} {path} holds the weights of another architecture than {type(model).__name__} ({report}): load '
            'it with the model it was saved from (the run directory\'s config.json names it: --model and the head '
            'options must match)')
    model.load_state_dict(state, strict=strict)
    return model




def refuse_pickle(path: PathLike) -> None:
    """Raise the error for a pickle checkpoint: safetensors only, with the one-line conversion."""
    raise ValueError(f'{path} is a pickle checkpoint; ggam_layers loads safetensors only (a pickle can run code when '
                     f'loaded). To use it, {CONVERT_HINT.replace("PATH", repr(str(path)))}')
