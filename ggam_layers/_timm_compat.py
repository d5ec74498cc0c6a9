"""What differs between the timm releases the package supports (timm >= 1.0.16, the first with `local-dir:`).

- `register_notrace_function`: in `timm.layers` from timm 1.0.17, in `timm.models._features_fx` before.
- `create_model(..., device=...)`: timm's models take `device` (and `dtype`) from timm 1.0.21; before, the model is
  built on the CPU and moved (building under `with torch.device('meta')` fails in their `__init__`).
- `model.safetensors` weights: timm < 1.0.26 reads a `local-dir:` folder's weights with `torch.load`, timm < 1.0.29
  an `hf_hub_filename` naming a .safetensors file too; `safetensors_source` points such a pretrained config where
  timm loads them with safetensors.
- `save_for_hf`: takes `data_config`, and merges `model_config['pretrained_cfg']` into the model's pretrained config,
  from timm 1.0.31. Before, that `pretrained_cfg` replaced the whole pretrained config and the data config had no way
  in: `save_for_hf` here then writes the same config.json in two steps (timm's, then the merge and the data config).
- timm's hub module: timm 1.0.16 - 1.0.20 import `repo_type_and_id_from_hf_id`, which huggingface_hub 2.0 removed, so
  beside huggingface_hub >= 2 timm takes the hub as missing (`timm_hub_available()` is False) and its `save_for_hf`
  refuses to write a local folder. `save_for_hf` here then takes the same steps without timm's hub check: the weights
  as timm writes them, then timm's own `save_config_for_hf` (the same config.json). Loading a `local-dir:` folder
  needs no hub in any timm release; downloads by timm (`pretrained=True` for Hub-hosted weights, `hf-hub:` names
  through `timm.create_model`) do, and `hub_mismatch()` says what to install.
"""
import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

import timm
import torch
from timm.models import _hub as _timm_hub
from timm.models import save_for_hf as _timm_save_for_hf

from ._files import DATA_CONFIG_KEYS

try:
    from timm.layers import register_notrace_function
except ImportError:  # timm < 1.0.17
    from timm.models._features_fx import register_notrace_function

__all__ = ['create_model', 'hub_mismatch', 'register_notrace_function', 'safetensors_source', 'save_for_hf',
           'timm_hub_available']

_TIMM_VERSION = tuple(int(n) for n in re.findall(r'\d+', timm.__version__)[:3])

_TAKES_DATA_CONFIG = 'data_config' in inspect.signature(_timm_save_for_hf).parameters


def create_model(name: str, device=None, **kwargs) -> torch.nn.Module:
    """`timm.create_model(name, device=device, **kwargs)`, also where the model takes no `device` argument."""
    if device is None:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, device=device, **kwargs)
    except TypeError as e:
        if "'device'" not in str(e):
            raise
    return timm.create_model(name, **kwargs).to(device)


def safetensors_source(cfg: Any) -> Any:
    """A timm `PretrainedCfg` whose `model.safetensors` this timm loads with safetensors (not `torch.load`)."""
    if _TIMM_VERSION < (1, 0, 26) and cfg.source == 'local-dir' and cfg.file \
            and (Path(cfg.file) / 'model.safetensors').is_file():  # the folder's weights as a plain file
        return dataclasses.replace(cfg, source=None, file=str(Path(cfg.file) / 'model.safetensors'))
    if _TIMM_VERSION < (1, 0, 29) and cfg.hf_hub_filename == 'model.safetensors':
        return dataclasses.replace(cfg, hf_hub_filename=None)  # timm's safe alternative to its default filename
    return cfg


def timm_hub_available() -> bool:
    """Whether timm's hub module imported huggingface_hub (False for timm < 1.0.21 beside huggingface_hub >= 2)."""
    return bool(_timm_hub.has_hf_hub(False))


def hub_mismatch() -> Optional[str]:
    """What to install where huggingface_hub is installed but timm cannot import it; None where timm's hub works."""
    if timm_hub_available():
        return None
    try:
        from importlib.metadata import version
        hub = version('huggingface_hub')
    except Exception:  # not installed: timm's own message ('pip install huggingface_hub') is the right one
        return None
    return (f'timm {timm.__version__} cannot import huggingface_hub {hub} (timm 1.0.16 - 1.0.20 need huggingface_hub '
            "< 2), so timm cannot download from the Hugging Face Hub: pip install 'timm>=1.0.21' (or "
            "'huggingface_hub<2')")


def _timm_save(model, save_directory, safe_serialization, **kwargs) -> None:
    """timm's `save_for_hf`; where timm's hub import failed, its steps without its hub check, which a local folder
    does not need: the weights as it writes them, then its `save_config_for_hf` (the same config.json)."""
    if timm_hub_available():
        _timm_save_for_hf(model, save_directory, safe_serialization=safe_serialization, **kwargs)
        return
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = model.state_dict()
    if safe_serialization is True or safe_serialization == 'both':
        from safetensors.torch import save_file
        save_file(tensors, str(directory / _timm_hub.HF_SAFE_WEIGHTS_NAME))
    if safe_serialization is False or safe_serialization == 'both':
        torch.save(tensors, directory / _timm_hub.HF_WEIGHTS_NAME)
    _timm_hub.save_config_for_hf(model, directory / 'config.json', **kwargs)


def save_for_hf(model, save_directory, model_config: Optional[Dict[str, Any]] = None,
                model_args: Optional[Dict[str, Any]] = None, safe_serialization=False,
                data_config: Optional[Dict[str, Any]] = None) -> None:
    """`timm.models.save_for_hf` with timm 1.0.31's `data_config` and `model_config['pretrained_cfg']` merge,
    also where timm's hub import failed (`timm_hub_available()`: writing a local folder does not need the hub)."""
    if _TAKES_DATA_CONFIG:
        _timm_save(model, save_directory, model_config=model_config, model_args=model_args,
                   safe_serialization=safe_serialization, data_config=data_config)
        return
    model_config = dict(model_config or {})
    overrides = dict(model_config.pop('pretrained_cfg', None) or {})
    _timm_save(model, save_directory, model_config=model_config, model_args=model_args,
               safe_serialization=safe_serialization)
    path = Path(save_directory) / 'config.json'
    config = json.loads(path.read_text(encoding='utf-8'))
    cfg = config['pretrained_cfg']
    cfg.update(overrides)
    arch = cfg.pop('architecture', None)
    if arch is not None and 'architecture' not in model_config:
        config['architecture'] = arch
    data_config = data_config or {}
    for key in DATA_CONFIG_KEYS:
        if data_config.get(key) is not None:
            value = data_config[key]
            cfg[key] = list(value) if isinstance(value, (tuple, list)) else value
    if data_config.get('input_size') is not None:  # as timm 1.0.31: the export's size replaces the test size
        cfg.pop('test_input_size', None)
        cfg.pop('test_pool_size', None)
    if data_config.get('crop_pct') is not None:
        cfg.pop('test_crop_pct', None)
    cfg['num_classes'] = model.num_classes
    args = config.get('model_args') or {}
    if isinstance(args.get('img_size'), int):  # recorded as timm 1.0.31 records it
        args['img_size'] = [args['img_size']] * 2
    path.write_text(json.dumps(config, indent=2), encoding='utf-8')
