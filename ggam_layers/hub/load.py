"""Load a GGAM model by name, tag, folder or Hub repository, with errors that name the file, the key and the fix.

Weights are safetensors only: a `.bin` / `.pth` / `.pt` / `.ckpt` is refused, never unpickled, with the one-line
conversion to safetensors.
"""
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import safetensors
import timm
import torch.nn as nn
from huggingface_hub import constants, hf_hub_download

try:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
except ImportError:  # huggingface_hub < 0.24 has them in huggingface_hub.utils only
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
from timm.models import get_pretrained_cfg, is_model, parse_model_name, split_model_name_tag

from .._files import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, check_safetensors, refuse_pickle
from .._timm_compat import timm_hub_available
from ..model import GGAMModel
from ._common import package_version, registry_module

__all__ = ['load_model', 'read_model_config']

_logger = logging.getLogger(__name__)

def read_model_config(path: Path, origin: str) -> Dict[str, Any]:
    """The timm model config.json at `path` (named `origin` in errors); refuses bad JSON and a missing architecture."""
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise ValueError(f'{origin} is not valid JSON: {e}') from e
    if not isinstance(config, dict):
        raise ValueError(f'{origin} must hold a JSON object, got {type(config).__name__}')
    if not config.get('architecture') and not (config.get('pretrained_cfg') or {}).get('architecture'):
        raise ValueError(f"{origin} has no 'architecture' key: it is not a timm model config (save it with "
                         'ggam_layers.hub.save_pretrained)')
    return config


def _unknown_architecture(arch: str, origin: str) -> str:
    ggam = sorted(n for n in timm.list_models('ggam*'))
    if arch.startswith('ggam'):
        return (f'{origin} names architecture {arch!r}, which ggam-layers {package_version()} does not register (it '
                f'registers {ggam}): the checkpoint needs a newer ggam-layers (`pip install -U ggam-layers`)')
    return (f'{origin} names architecture {arch!r}, which is not registered with timm {timm.__version__}: if it is '
            f'a timm model, upgrade timm (`pip install -U timm`); if another package defines it, import that package '
            f'first; GGAM checkpoints name one of {ggam}')


def _check_config(config: Dict[str, Any], origin: str) -> str:
    arch = config.get('architecture') or config['pretrained_cfg']['architecture']
    if not is_model(arch):
        raise RuntimeError(_unknown_architecture(arch, origin))
    backbone = (config.get('model_args') or {}).get('backbone')
    if backbone is not None and not str(backbone).startswith(('hf-hub:', 'local-dir:')) \
            and not is_model(split_model_name_tag(str(backbone))[0]):
        raise RuntimeError(f"{origin} key model_args.backbone names {backbone!r}, which is not a model of timm "
                           f'{timm.__version__}: upgrade timm (`pip install -U timm`)')
    return arch


def _hub_file(repo: str, filename: str, cache_dir: Optional[Union[str, Path]]) -> Path:
    repo_id, _, revision = repo.partition('@')
    where = f'hf-hub:{repo}'
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, cache_dir=cache_dir))
    except LocalEntryNotFoundError as e:
        cache = cache_dir or constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f'{filename} of {where} is not in the Hugging Face cache {cache} and the Hub cannot be reached (offline: '
            f'HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)}); download it once online, or point at a local copy '
            'with local-dir:PATH') from e
    except RevisionNotFoundError as e:
        raise ValueError(f'{where}: revision {revision!r} does not exist in {repo_id}') from e
    except RepositoryNotFoundError as e:
        raise ValueError(f'{where}: repository {repo_id} not found, or private (log in with `hf auth login` or set '
                         'HF_TOKEN)') from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f'{where} has no {filename}') from e


def _resolve(name_or_path: Union[str, Path], pretrained: bool, cache_dir) -> Tuple[str, Optional[Path], str]:
    """The timm model name to create, the weights file it will read (if known) and a description for errors."""
    prefixed = isinstance(name_or_path, str) and re.match(r'(?i)(hf-hub|hf_hub|local-dir):', name_or_path)
    if isinstance(name_or_path, Path) or (isinstance(name_or_path, str) and not prefixed and name_or_path
                                          and Path(name_or_path).exists()):
        path = Path(name_or_path)
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES:
                refuse_pickle(path)
            if path.name != WEIGHTS_NAME:
                raise ValueError(f'{path}: pass the folder holding {CONFIG_NAME} and {WEIGHTS_NAME} (a weights file '
                                 f'must be named {WEIGHTS_NAME} to load with its config)')
            path = path.parent
        name_or_path = f'local-dir:{path}'
    if not isinstance(name_or_path, str):
        raise TypeError(f'name_or_path must be a model name or a path, got {type(name_or_path).__name__}')
    source, ident = parse_model_name(name_or_path)
    if source == 'local-dir':
        folder = Path(ident)
        if not folder.is_dir():
            raise FileNotFoundError(f'local-dir:{folder}: no such folder')
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f'{config_file} is missing: a GGAM model folder holds {CONFIG_NAME} and '
                                    f'{WEIGHTS_NAME} (written by ggam_layers.hub.save_pretrained)')
        _check_config(read_model_config(config_file, str(config_file)), str(config_file))
        weights = folder / WEIGHTS_NAME
        if pretrained and not weights.is_file():
            pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                refuse_pickle(pickles[0])
            raise FileNotFoundError(f'{weights} is missing (pass pretrained=False for an untrained model)')
        return name_or_path, weights, str(folder)
    if source == 'hf-hub':
        config_file = _hub_file(ident, CONFIG_NAME, cache_dir)
        origin = f'{CONFIG_NAME} of hf-hub:{ident}'
        _check_config(read_model_config(config_file, origin), origin)
        weights = _hub_file(ident, WEIGHTS_NAME, cache_dir) if pretrained else None
        if not timm_hub_available():  # timm < 1.0.21 beside huggingface_hub >= 2: the downloaded snapshot folder
            _logger.debug('timm cannot use huggingface_hub: loading hf-hub:%s from %s', ident, config_file.parent)
            return f'local-dir:{config_file.parent}', weights, f'hf-hub:{ident}'
        return name_or_path, weights, f'hf-hub:{ident}'
    arch, tag = split_model_name_tag(ident)
    if not is_model(arch):
        raise RuntimeError(_unknown_architecture(arch, f'model name {ident!r}'))
    weights = None
    if pretrained:
        try:
            cfg = get_pretrained_cfg(ident if tag else arch)
        except RuntimeError:  # timm: 'Invalid pretrained tag'
            cfg = None
        if cfg is None and tag:
            raise ValueError(f'{arch} has no pretrained tag {tag!r}; its tags: {timm.list_pretrained(arch + ".*")}')
        if cfg is not None and cfg.file:
            weights = Path(cfg.file)
            if weights.suffix in PICKLE_SUFFIXES:
                refuse_pickle(weights)
            if not weights.is_file():
                raise FileNotFoundError(f'{ident}: its weights file {weights} is missing (a broken installation? '
                                        'reinstall ggam-layers)')
        elif cfg is not None and cfg.hf_hub_id:
            weights = _hub_file(cfg.hf_hub_id, cfg.hf_hub_filename or WEIGHTS_NAME, cache_dir)
    return ident, weights, ident


def _explain_load_error(name: str, weights: Path, kwargs: Dict[str, Any]) -> Optional[str]:
    """Name the keys of `weights` that do not fit the model `name` builds, or None when they all fit."""
    try:
        model = timm.create_model(name, pretrained=False, device='meta', **kwargs)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        with safetensors.safe_open(str(weights), framework='pt') as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # the original error is the best explanation then
        _logger.debug('could not compare %s with %s: %s', weights, name, e)
        return None
    if not any(k.startswith('backbone.') for k in got):  # a plain backbone checkpoint
        got = {f'backbone.{k}': v for k, v in got.items()}
        own = {k: v for k, v in own.items() if k.startswith('backbone.')}
    elif kwargs.get('num_classes') is not None:  # a new classifier was asked for: its shape may differ
        own = {k: v for k, v in own.items() if not k.startswith('head.fc.')}
        got = {k: v for k, v in got.items() if not k.startswith('head.fc.')}

    def first(items: List[str]) -> str:
        return '; '.join(items[:4]) + (f' (+{len(items) - 4} more)' if len(items) > 4 else '')

    wrong = [f'{k}: file {got[k]}, model {own[k]}' for k in own if k in got and got[k] != own[k]]
    missing = [k for k in own if k not in got]
    extra = [k for k in got if k not in own]
    parts = ([f'shape mismatch for {first(wrong)}'] if wrong else []) + (
        [f'missing keys [{first(missing)}]'] if missing else []) + (
        [f'unexpected keys [{first(extra)}]'] if extra else [])
    if not parts:
        return None
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture', name)
    built = f'{arch} (backbone {model.backbone_name})' if isinstance(model, GGAMModel) else arch
    return (f'weights in {weights} do not fit {built}, built from {name}: {", ".join(parts)}. Were they saved from '
            'another architecture or other options than its config names?')


def load_model(
        name_or_path: Union[str, Path],
        *,
        pretrained: bool = True,
        cache_dir: Optional[Union[str, Path]] = None,
        **kwargs,
) -> nn.Module:
    """`timm.create_model` for GGAM checkpoints, with errors that say what to do.

    Registers the GGAM architectures first (no `import ggam_layers` needed), checks the folder or Hub repository
    before building (config.json present and naming a registered architecture, safetensors weights present), and
    turns timm's `Unknown model` and state-dict errors into messages naming the file, the key and the fix.
    Pickle weights (`.bin`, `.pth`, ...) are refused, never unpickled.

    Args:
        name_or_path: 'hf-hub:ORG/NAME[@REVISION]', 'local-dir:PATH', a folder path, a registered name or tag
            ('ggam_test_resnet.synthetic'), or a `model.safetensors` beside its config.json.
        pretrained: Load the weights (False builds the architecture only).
        cache_dir: Hugging Face cache folder (default: huggingface_hub's `HF_HUB_CACHE`).
        **kwargs: `timm.create_model` arguments: `num_classes` (a new classifier when it differs), ...
    """
    registry_module()
    name, weights, where = _resolve(name_or_path, pretrained, cache_dir)
    if weights is not None and weights.is_file():
        check_safetensors(weights)  # empty, truncated or foreign: one error naming the file and the fix
    if cache_dir is not None:
        kwargs['cache_dir'] = cache_dir
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if str(e).startswith('Unknown model'):
            raise RuntimeError(_unknown_architecture(str(e).partition('(')[2].rstrip(')'), where)) from e
        explanation = _explain_load_error(name, weights, kwargs) if weights is not None else None
        if explanation is None:
            raise
        raise ValueError(explanation) from e
    except (KeyError, AttributeError, ValueError) as e:  # e.g. checkpoint_filter_fn on a backbone that does not fit
        explanation = _explain_load_error(name, weights, kwargs) if weights is not None else None
        if explanation is None:
            raise
        raise ValueError(explanation) from e
