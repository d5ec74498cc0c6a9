"""Training checkpoints as a model and the `save_pretrained` arguments that describe it (for `ggam-layers publish`).

A run directory of `ggam-layers train`, one of its `checkpoints/epoch-NNNN/` folders, or a `save_pretrained` folder.
"""
import json
import re
from pathlib import Path
from typing import Any, Dict, Tuple, Union

from .._files import CONFIG_NAME, DATA_CONFIG_KEYS, PICKLE_SUFFIXES, WEIGHTS_NAME, load_weights, refuse_pickle
from ..model import GGAMModel
from .load import load_model, read_model_config

__all__ = ['load_checkpoint']


def load_checkpoint(path: Union[str, Path]) -> Tuple[GGAMModel, Dict[str, Any]]:
    """Read a checkpoint folder into a model and the `save_pretrained` arguments that describe it.

    Accepts a run directory of `ggam-layers train` (its `config.json` is a timm model config with the run under
    the `ggam_layers` key: dataset, recipe, metrics, data config, train config), one of its
    `checkpoints/epoch-NNNN/` folders (the run's config, that epoch's weights and metrics), or a folder written by
    `save_pretrained`.

    Args:
        path: The folder, or its `model.safetensors`.

    Returns:
        The model (eval mode) and a dict of `save_pretrained` keyword arguments (`label_names`, `dataset`,
        `metrics`, `recipe`, `data_config`, `extra_info`).
    """
    path = Path(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            refuse_pickle(path)
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f'checkpoint {path}: no such folder')
    config_file = path / CONFIG_NAME
    if not config_file.is_file() and path.parent.name == 'checkpoints' and (path.parents[1] / CONFIG_NAME).is_file():
        return _load_epoch_checkpoint(path)
    if not config_file.is_file():
        raise FileNotFoundError(f'{config_file} is missing: a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}'
                                ' (a run directory of `ggam-layers train`, or a folder written by save_pretrained)')
    config = read_model_config(config_file, str(config_file))
    info = dict(config.get('ggam_layers') or {})
    if info.get('kind') == 'plain':
        raise ValueError(f'{config_file} is a run of the plain timm baseline, not a GGAM model: publish it with '
                         'timm.models.push_to_hf_hub')
    model = load_model(path)
    if not isinstance(model, GGAMModel):
        raise ValueError(f"{config_file} names architecture {config.get('architecture')!r}, not a GGAM model")
    save_kwargs: Dict[str, Any] = {k: info.pop(k) for k in ('dataset', 'metrics', 'recipe') if k in info}
    data_config = info.pop('data_config', None)
    if data_config:
        save_kwargs['data_config'] = {k: v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    if config.get('label_names'):
        save_kwargs['label_names'] = config['label_names']
    info.pop('paper', None)
    if info:
        save_kwargs['extra_info'] = info
    return model.eval(), save_kwargs


def _load_epoch_checkpoint(path: Path) -> Tuple[GGAMModel, Dict[str, Any]]:
    """`RUN/checkpoints/epoch-NNNN/`: the run's config with this epoch's weights and this epoch's metrics."""
    run = path.parents[1]
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f'{weights} is missing')
    model, save_kwargs = load_checkpoint(run)
    load_weights(model, weights, what=f'checkpoint weights (for the model of {run / CONFIG_NAME})')
    save_kwargs.pop('metrics', None)  # the run's final metrics; this epoch's come from metrics.jsonl
    match = re.fullmatch(r'epoch-(\d+)', path.name)
    log = run / 'metrics.jsonl'
    if match and log.is_file():
        rows = [json.loads(line) for line in log.read_text(encoding='utf-8').splitlines() if line.strip()]
        row = next((r for r in rows if r.get('epoch') == int(match.group(1))), None)
        if row is not None:
            save_kwargs['metrics'] = {k: v for k, v in row.items() if k.startswith('test_') and v is not None}
            save_kwargs['metrics']['epoch'] = row['epoch']
    return model.eval(), save_kwargs
