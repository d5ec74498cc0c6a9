"""Save a GGAM model as the folder timm reads: `config.json`, `model.safetensors` and a README model card.

`timm.create_model('local-dir:PATH', pretrained=True)` (after `import ggam_layers`) rebuilds the same model with the
same weights; `config.json` records the architecture (`ggam_model_args`) and is checked to rebuild it before writing.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import timm
import torch.nn as nn

from .._files import CONFIG_NAME, DATA_CONFIG_KEYS, README_NAME, TMP_PREFIX, WEIGHTS_NAME, save_weights
from .._timm_compat import save_for_hf
from ..attention import LEGACY_SWITCHES
from ..model import GGAMModel
from ._common import LIBRARY_URL, PAPER_ID, PAPER_NAME, package_version, registry_module
from .card import model_card

__all__ = ['ggam_model_args', 'model_config_json', 'save_pretrained']

# create_model keyword arguments that are not architecture (run settings), or that the recorded rd_channels supersedes
_RUNTIME_ARGS = ('device', 'dtype', 'pretrained_model_args', 'backbone_pretrained', 'pretrained_cfg',
                 'pretrained_cfg_overlay', 'cache_dir', 'global_pool', 'rd_ratio', 'rd_divisor')


def ggam_model_args(model: GGAMModel, act_layer: Optional[str] = None) -> Dict[str, Any]:
    """The constructor arguments that rebuild `model`'s architecture, as JSON-serialisable values.

    Read from the model itself (backbone name, every GGAM option as it is after resolution: the hidden width
    `rd_channels` rather than `rd_ratio`, the resolved `pool_type` rather than 'auto'), on top of the keyword
    arguments timm recorded when the model came from `timm.create_model` (e.g. `img_size`, `backbone_args`).

    Args:
        model: The model.
        act_layer: The timm name to record for a channel-attention activation that has none (else ValueError).
    """
    if not isinstance(model, GGAMModel):
        raise TypeError(f'model must be a GGAMModel, got {type(model).__name__}')
    args = {k: v for k, v in dict(getattr(model, 'model_args', None) or getattr(model, '_model_args', {})).items()
            if k not in _RUNTIME_ARGS and not k.endswith('drop_path_rate')}
    head = model.head
    args.update(backbone=model.backbone_name, num_classes=model.num_classes, in_chans=model.in_chans,
                pool_type=head.pool_type, drop_rate=head.drop.p)
    patch_size = getattr(getattr(model.backbone, 'patch_embed', None), 'img_size', None)
    if 'img_size' not in args and 'img_size' not in args.get('backbone_args', {}) and patch_size is not None:
        args['img_size'] = list(patch_size) if isinstance(patch_size, (tuple, list)) else patch_size
    for key in (*LEGACY_SWITCHES, 'rd_channels', 'act_layer'):
        args.pop(key, None)  # switches of earlier releases (`parts` replaced them), options the head may not have
    args.update(model.head_args(act_layer))
    return args


def _architecture(model: GGAMModel) -> str:
    """The registered entrypoint that rebuilds `model`: the named variant of its backbone (`ggam_resnet50` for
    'resnet50'), else the generic `ggam` (the backbone goes in `model_args` either way)."""
    named = registry_module().GGAM_BACKBONES
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if arch in named and named[arch][0] == model.backbone_name:
        return arch
    return next((name for name, (backbone, _) in named.items() if backbone == model.backbone_name), 'ggam')


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f'{name} must be JSON-serialisable (str, numbers, lists, dicts), got {value!r}: {e}') from e


def model_config_json(
        model: nn.Module,
        *,
        model_config: Dict[str, Any],
        model_args: Dict[str, Any],
        data_config: Optional[Dict[str, Any]] = None,
        tmp_parent: Optional[Union[str, Path]] = None,
) -> Dict[str, Any]:
    """timm's `config.json` of `model` as a dict: what `timm.models.save_for_hf` writes, the one place it is called.

    A GGAM model drops timm's `global_pool` (the head pools D itself, `pool_type`); `pretrained_cfg` keeps only the
    keys that have a value.

    Args:
        model: A GGAM model or a plain timm model.
        model_config: Extra top-level keys (`label_names`, `ggam_layers`, ...).
        model_args: The keyword arguments that rebuild the architecture.
        data_config: Preprocessing to record (`DATA_CONFIG_KEYS`); defaults to the model's `pretrained_cfg`.
        tmp_parent: Folder for the temporary files (the system's temporary folder by default).
    """
    data_config = {k: v for k, v in data_config.items() if k in DATA_CONFIG_KEYS} if data_config else None
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX + 'config.', dir=tmp_parent) as tmp:
        save_for_hf(model, tmp, model_config=model_config, model_args=model_args, safe_serialization=True,
                    data_config=data_config)
        config = json.loads((Path(tmp) / CONFIG_NAME).read_text(encoding='utf-8'))
    if isinstance(model, GGAMModel):
        config.pop('global_pool', None)
        # timm adds back every create_model argument it recorded: not the switches `parts` replaced
        for key in ('global_pool', *(k for k in LEGACY_SWITCHES if k not in model_args)):
            config.get('model_args', {}).pop(key, None)
    config['pretrained_cfg'] = {k: v for k, v in config['pretrained_cfg'].items() if v is not None}
    return config


def save_pretrained(
        model: GGAMModel,
        directory: Union[str, Path],
        *,
        label_names: Optional[Union[Sequence[str], Dict[int, str]]] = None,
        dataset: Optional[Union[str, Dict[str, Any]]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        recipe: Optional[Union[str, Dict[str, Any]]] = None,
        overwrite: bool = False,
        data_config: Optional[Dict[str, Any]] = None,
        model_args: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        extra_info: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write `config.json`, `model.safetensors` and a README.md model card, exactly what timm reads.

    `timm.create_model('local-dir:DIR', pretrained=True)` (after `import ggam_layers`) rebuilds the same model
    with the same weights; uploaded, the folder loads with `timm.create_model('hf-hub:ORG/NAME', pretrained=True)`.

    Args:
        model: The GGAM model.
        directory: Output folder; created if missing.
        label_names: Class names in classifier order (or a dict index -> name).
        dataset: Training dataset name (or a dict describing it), for the model card and config.json.
        metrics: Evaluation results, name -> value.
        recipe: Training recipe: the exact command line, or a dict of hyper-parameters.
        overwrite: Replace config.json, model.safetensors and README.md in a non-empty `directory` (other files
            there are left alone); without it a non-empty folder is refused.
        data_config: Preprocessing of the checkpoint (`input_size`, `mean`, `std`, `interpolation`, `crop_pct`,
            ...); defaults to the model's `pretrained_cfg`.
        model_args: Architecture arguments to record on top of `ggam_model_args(model)` (e.g. `backbone_args`
            of a model built by `wrap_timm_model`, which the model does not keep).
        repo_id: Hub repository the folder is meant for (loading instructions in the card).
        metadata: Extra string metadata stored in the safetensors header (a `recipe` string is stored there too).
        extra_info: More provenance for config.json's `ggam_layers` key (e.g. the training run's `train_config`).

    Returns:
        The folder.
    """
    if not isinstance(model, GGAMModel):
        raise TypeError(f'model must be a GGAMModel (e.g. timm.create_model("ggam_resnet50")), got '
                        f'{type(model).__name__}')
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f'directory {directory} exists and is not a folder')
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f'directory {directory} is not empty; pass overwrite=True to replace its '
                              f'{CONFIG_NAME}, {WEIGHTS_NAME} and {README_NAME}')
    if label_names is not None:
        label_names = dict(label_names) if isinstance(label_names, dict) else list(label_names)
        if len(label_names) != model.num_classes:
            raise ValueError(f'label_names has {len(label_names)} names, but the model has num_classes='
                             f'{model.num_classes}')
    for name, value in (('dataset', dataset), ('metrics', metrics), ('recipe', recipe), ('model_args', model_args),
                        ('data_config', data_config), ('extra_info', extra_info)):
        _check_json(name, value)
    if metrics is not None and not isinstance(metrics, dict):
        raise TypeError(f'metrics must be a dict name -> value, got {type(metrics).__name__}')
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError('metadata must map str to str (safetensors header metadata)')

    args = ggam_model_args(model, act_layer=(model_args or {}).get('act_layer'))
    args.update(model_args or {})
    arch = _architecture(model)
    backbone_cfg = getattr(model.backbone, 'pretrained_cfg', None) or {}
    first_conv = backbone_cfg.get('first_conv')
    info = dict(extra_info or {})
    if 'version' in info:
        info['trained_with_version'] = info.pop('version')
    info.update(version=package_version(), paper=PAPER_ID)
    info.update({k: v for k, v in (('dataset', dataset), ('metrics', metrics), ('recipe', recipe)) if v is not None})
    model_config = {
        'architecture': arch,
        'pretrained_cfg': {
            'architecture': arch, 'tag': None, 'classifier': 'head.fc', 'paper_ids': PAPER_ID,
            'paper_name': PAPER_NAME, 'origin_url': LIBRARY_URL,
            'first_conv': f'backbone.{first_conv}' if isinstance(first_conv, str) else None,
        },
        'ggam_layers': info,
    }
    if label_names:
        model_config['label_names'] = label_names

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix='.ggam-save-') as tmp:
        config = model_config_json(model, model_config=model_config, model_args=args, data_config=data_config,
                                   tmp_parent=tmp)
        config_path = Path(tmp) / CONFIG_NAME
        config['pretrained_cfg']['first_conv'] = model_config['pretrained_cfg']['first_conv']
        size = args.get('img_size')
        if size is not None and (data_config or {}).get('input_size') is None:  # a resized ViT / Swin backbone
            size = [size, size] if isinstance(size, int) else list(size)
            if config['pretrained_cfg']['input_size'][1:] != size:
                config['pretrained_cfg']['input_size'] = [args.get('in_chans', 3), *size]
                for key in ('pool_size', 'test_input_size', 'test_pool_size'):
                    config['pretrained_cfg'].pop(key, None)
        config_path.write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
        _verify_rebuild(model, config)
        weights = Path(tmp) / WEIGHTS_NAME
        header = {'format': 'pt', 'architecture': arch, 'backbone': str(args.get('backbone')),
                  'ggam_layers_version': package_version(), 'paper': PAPER_ID}
        if isinstance(recipe, str):
            header['recipe'] = recipe
        header.update(metadata or {})
        save_weights(model, weights, metadata=header)
        _canonical_header(weights)
        num_params = sum(p.numel() for p in model.parameters())
        card = model_card(config, repo_id.split('/')[-1] if repo_id else directory.resolve().name, repo_id=repo_id,
                          num_params=num_params, dataset=dataset, metrics=metrics, recipe=recipe)
        (Path(tmp) / README_NAME).write_text(card, encoding='utf-8')
        for name in (CONFIG_NAME, WEIGHTS_NAME, README_NAME):
            shutil.move(str(Path(tmp) / name), str(directory / name))
    return directory


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, so that equal weights and metadata give equal bytes.

    safetensors writes its `__metadata__` in hash-map order, which changes from call to call; the tensor data and its
    offsets stay as they are, the header keeps its 8-byte alignment (space padding, as safetensors pads).
    """
    data = path.read_bytes()
    n = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(',', ':')).encode()
    text += b' ' * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, 'little') + text + data[8 + n:])


def _verify_rebuild(model: GGAMModel, config: Dict[str, Any]) -> None:
    """Build the architecture from `config` on the meta device and check every weight's name and shape."""
    arch, args = config['architecture'], dict(config.get('model_args', {}))
    try:
        rebuilt = timm.create_model(arch, pretrained=False, device='meta', **args)
    except Exception as e:
        raise ValueError(f'config.json would not rebuild this model: timm.create_model({arch!r}, **model_args) fails '
                         f'({e}); pass the missing arguments as save_pretrained(..., model_args=...)') from e
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    new = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    diff = sorted(set(own) ^ set(new)) + [f'{k} {own[k]} vs {new[k]}' for k in own if k in new and own[k] != new[k]]
    if diff:
        raise ValueError(f'config.json would rebuild a different model ({len(diff)} weights differ, e.g. {diff[:3]}): '
                         'the model holds architecture arguments it does not record; pass them as '
                         "save_pretrained(..., model_args={'img_size': ..., 'backbone_args': {...}})")
