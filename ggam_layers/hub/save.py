"""Pretrained GGAM models on the Hugging Face Hub, the timm way.

`save_pretrained` writes the folder timm reads (`config.json` with the architecture, `model_args` and the data
config, `model.safetensors`, a README model card), `push_to_hub` uploads it, and after `import ggam_layers`
`timm.create_model('hf-hub:ORG/NAME', pretrained=True)` or `timm.create_model('local-dir:PATH')` loads it back.
`load_model` does the same with errors that name the file, the key and the fix.

Weights are safetensors only: nothing here writes or reads a pickle. A `.bin` / `.pth` / `.pt` / `.ckpt` offered
to `load_model` or to `ggam-layers publish` is refused with the one-line conversion to safetensors.
"""
import argparse
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import safetensors
import safetensors.torch
import timm
import torch.nn as nn
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from timm.layers import get_act_layer
from timm.models import get_pretrained_cfg, is_model, parse_model_name, save_for_hf, split_model_name_tag

from ..engine.checkpoint import check_safetensors, load_weights
from ..model import GGAMModel

__all__ = [
    'CONFIG_NAME', 'PAPER_BIBTEX', 'PICKLE_SUFFIXES', 'WEIGHTS_NAME', 'ggam_model_args', 'load_checkpoint',
    'load_model', 'model_card', 'push_to_hub', 'register_cli', 'save_pretrained',
]

_logger = logging.getLogger(__name__)

CONFIG_NAME = 'config.json'
WEIGHTS_NAME = 'model.safetensors'
README_NAME = 'README.md'
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.ckpt', '.tar', '.pkl', '.pickle')
PAPER_ID = 'arXiv:2101.09666'
PAPER_NAME = 'Grad-CAM Guided Channel-Spatial Attention Module for Fine-Grained Visual Classification'
PAPER_BIBTEX = """@article{xu2021gradcam,
  title         = {Grad-CAM Guided Channel-Spatial Attention Module for Fine-Grained Visual Classification},
  author        = {Xu, Shuai and Chang, Dongliang and Xie, Jiyang and Ma, Zhanyu},
  journal       = {arXiv preprint arXiv:2101.09666},
  year          = {2021},
  eprint        = {2101.09666},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
  url           = {https://arxiv.org/abs/2101.09666}
}"""
_LIBRARY_URL = 'https://github.com/ggam-layers/ggam-layers'
_CONVERT_HINT = (
    "convert it once, in a process you trust: `import torch, safetensors.torch; sd = torch.load(PATH, "
    "map_location='cpu', weights_only=True); safetensors.torch.save_file(sd.get('state_dict', sd), "
    "'model.safetensors')`")
# activations the channel attention may use, by timm name (get_act_layer resolves each to a class)
_ACT_NAMES = ('relu', 'gelu', 'gelu_tanh', 'quick_gelu', 'silu', 'swish', 'mish', 'sigmoid', 'tanh', 'hard_sigmoid',
              'hard_swish', 'hard_mish', 'relu6', 'leaky_relu', 'elu', 'celu', 'selu', 'prelu', 'identity')
# create_model keyword arguments that are not architecture (run settings), or that the recorded rd_channels supersedes
_RUNTIME_ARGS = ('device', 'dtype', 'pretrained_model_args', 'backbone_pretrained', 'pretrained_cfg',
                 'pretrained_cfg_overlay', 'cache_dir', 'global_pool', 'rd_ratio', 'rd_divisor')


def _version() -> str:
    from .. import __version__
    return __version__


def _registry():
    from .. import registry
    return registry


# --- saving ------------------------------------------------------------------------------------------------------
def _act_name(act: nn.Module) -> str:
    for name in _ACT_NAMES:
        try:
            if type(act) is get_act_layer(name):
                return name
        except (KeyError, ValueError, TypeError):
            continue
    raise ValueError(
        f'the channel attention uses activation {type(act).__name__}, which has no timm name to record in '
        "config.json; pass model_args={'act_layer': '<timm name>'} to save_pretrained")


def ggam_model_args(model: GGAMModel) -> Dict[str, Any]:
    """The constructor arguments that rebuild `model`'s architecture, as JSON-serialisable values.

    Read from the model itself (backbone name, every GGAM option as it is after resolution: the hidden width
    `rd_channels` rather than `rd_ratio`, the resolved `pool_type` rather than 'auto'), on top of the keyword
    arguments timm recorded when the model came from `timm.create_model` (e.g. `img_size`, `backbone_args`).
    """
    if not isinstance(model, GGAMModel):
        raise TypeError(f'model must be a GGAMModel, got {type(model).__name__}')
    args = {k: v for k, v in dict(getattr(model, 'model_args', None) or getattr(model, '_model_args', {})).items()
            if k not in _RUNTIME_ARGS and not k.endswith('drop_path_rate')}
    head, attn = model.head, model.head.attn
    args.update(
        backbone=model.backbone_name,
        num_classes=model.num_classes,
        in_chans=model.in_chans,
        channel_attn=attn.channel_attn,
        spatial_attn=attn.spatial_attn,
        spatial_norm=attn.spatial_norm,
        temperature=attn.temperature,
        pool_type=head.pool_type,
        drop_rate=head.drop.p,
        cam_layer=head.cam_layer,
        closed_form=head.closed_form,
    )
    patch_size = getattr(getattr(model.backbone, 'patch_embed', None), 'img_size', None)
    if 'img_size' not in args and 'img_size' not in args.get('backbone_args', {}) and patch_size is not None:
        args['img_size'] = list(patch_size) if isinstance(patch_size, (tuple, list)) else patch_size
    if attn.channel_attn:
        args.update(rd_channels=attn.rd_channels, act_layer=_act_name(attn.act))
    else:
        args.pop('rd_channels', None)
        args.pop('act_layer', None)
    if attn.channel_rescale:
        args['channel_rescale'] = True
    return args


def _architecture(model: GGAMModel) -> str:
    """The registered entrypoint that rebuilds `model`: the named variant of its backbone (`ggam_resnet50` for
    'resnet50'), else the generic `ggam` (the backbone goes in `model_args` either way)."""
    named = _registry().GGAM_BACKBONES
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if arch in named and named[arch][0] == model.backbone_name:
        return arch
    return next((name for name, (backbone, _) in named.items() if backbone == model.backbone_name), 'ggam')


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f'{name} must be JSON-serialisable (str, numbers, lists, dicts), got {value!r}: {e}') from e


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return f'{v:.6g}'
    return f'`{v}`' if isinstance(v, (str, bool)) else str(v)


def model_card(
        config: Dict[str, Any],
        name: str,
        *,
        repo_id: Optional[str] = None,
        num_params: Optional[int] = None,
        dataset: Optional[Union[str, Dict[str, Any]]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        recipe: Optional[Union[str, Dict[str, Any]]] = None,
) -> str:
    """The README.md model card of a saved GGAM model (YAML front matter for the Hub, then Markdown).

    Args:
        config: The `config.json` content written by `save_pretrained`.
        name: Model name for the title.
        repo_id: Hub repository the card will live in (used in the loading instructions).
        num_params: Parameter count.
        dataset: Training dataset name, or a dict describing it.
        metrics: Evaluation results, name -> value.
        recipe: Training recipe: the command line, or a dict of hyper-parameters.
    """
    cfg = config['pretrained_cfg']
    args = config.get('model_args', {})
    license_ = cfg.get('license', 'apache-2.0')
    lines = ['---', 'tags:', '- image-classification', '- timm', '- ggam', '- fine-grained-classification',
             'library_name: timm', 'pipeline_tag: image-classification', f'license: {license_}']
    if isinstance(dataset, str) and re.fullmatch(r'[\w.\-/]+', dataset):
        lines += ['datasets:', f'- {dataset}']
    lines += ['---', f'# Model card for {name}', '']
    lines.append(
        f"A GGAM image classifier: timm's `{args.get('backbone')}` backbone followed by the Grad-CAM guided "
        'channel-spatial attention head of Xu et al., "Grad-CAM Guided Channel-Spatial Attention Module for '
        f'Fine-Grained Visual Classification" ([{PAPER_ID}](https://arxiv.org/abs/2101.09666)), built with '
        f'[ggam-layers]({_LIBRARY_URL}). The channel attention S and spatial attention T re-weight the last-stage '
        'feature maps; during training a symmetric KL term pulls S towards the Grad-CAM weights of the predicted '
        'class. At inference the model is a plain timm classifier: `model(x)` returns logits.')
    lines += ['', '## Model details', f"- **Architecture:** `{config['architecture']}` (timm entrypoint registered "
              'by `import ggam_layers`)', f"- **Backbone:** `{args.get('backbone')}`",
              f"- **Classes:** {config['num_classes']}"]
    if num_params is not None:
        lines.append(f'- **Parameters (M):** {num_params / 1e6:.3f}')
    size = cfg.get('input_size')
    if size:
        lines.append(f"- **Input:** {' x '.join(str(s) for s in size)}, mean {list(cfg.get('mean', ()))}, std "
                     f"{list(cfg.get('std', ()))}, {cfg.get('interpolation', 'bicubic')} interpolation, crop_pct "
                     f"{cfg.get('crop_pct')}")
    options = {k: v for k, v in args.items() if k not in ('backbone', 'num_classes')}
    if options:
        lines.append('- **Model arguments** (`config.json` `model_args`):')
        lines += [f'  - {k}: {_format_value(v)}' for k, v in options.items()]
    if dataset is not None:
        if isinstance(dataset, dict):
            lines.append('- **Dataset:**')
            lines += [f'  - {k}: {_format_value(v)}' for k, v in dataset.items()]
        else:
            lines.append(f'- **Dataset:** {dataset}')
    if recipe is not None:
        if isinstance(recipe, dict):
            lines.append('- **Training recipe:**')
            lines += [f'  - {k}: {_format_value(v)}' for k, v in recipe.items()]
        else:
            lines += ['- **Training recipe:**', '', '  ```bash', f'  {recipe}', '  ```']
    lines.append(f'- **License:** {license_}')
    lines.append(f'- **Software:** ggam-layers {_version()}, timm {timm.__version__}')
    if metrics:
        lines += ['', '## Evaluation', '', '| metric | value |', '| --- | --- |']
        lines += [f'| {k} | {_format_value(v)} |' for k, v in metrics.items()]
    hub_name = f'hf-hub:{repo_id}' if repo_id else 'hf-hub:ORG/NAME'
    lines += [
        '', '## How to load', '', '```python', 'import timm', 'import ggam_layers  # registers the GGAM '
        'architectures with timm; without it timm raises "Unknown model"', '',
        f"model = timm.create_model('{hub_name}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model)',
        'transform = timm.data.create_transform(**data_config, is_training=False)',
        'logits = model(transform(image).unsqueeze(0))  # image: a PIL image',
        '', '# a new classifier for fine-tuning (the backbone and the attention keep their weights)',
        f"model = timm.create_model('{hub_name}', pretrained=True, num_classes=10)",
        '# a pinned revision (commit hash, branch or tag)',
        f"model = timm.create_model('{hub_name}@<revision>', pretrained=True)",
        '# the same, with errors that name the file and the fix', f"model = ggam_layers.hub.load_model('{hub_name}')",
        '```', '', 'From a local copy of this folder: `timm.create_model(\'local-dir:PATH\', pretrained=True)`.',
        '', '## Citation', '', '```bibtex', PAPER_BIBTEX, '```', '']
    return '\n'.join(lines)


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

    args = ggam_model_args(model)
    args.update(model_args or {})
    arch = _architecture(model)
    backbone_cfg = getattr(model.backbone, 'pretrained_cfg', None) or {}
    first_conv = backbone_cfg.get('first_conv')
    info = dict(extra_info or {})
    if 'version' in info:
        info['trained_with_version'] = info.pop('version')
    info.update(version=_version(), paper=PAPER_ID)
    info.update({k: v for k, v in (('dataset', dataset), ('metrics', metrics), ('recipe', recipe)) if v is not None})
    model_config = {
        'architecture': arch,
        'pretrained_cfg': {
            'architecture': arch, 'tag': None, 'classifier': 'head.fc', 'paper_ids': PAPER_ID,
            'paper_name': PAPER_NAME, 'origin_url': _LIBRARY_URL,
            'first_conv': f'backbone.{first_conv}' if isinstance(first_conv, str) else None,
        },
        'ggam_layers': info,
    }
    if label_names:
        model_config['label_names'] = label_names

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix='.ggam-save-') as tmp:
        save_for_hf(model, tmp, model_config=model_config, model_args=args, safe_serialization=True,
                    data_config=data_config)
        config_path = Path(tmp) / CONFIG_NAME
        config = json.loads(config_path.read_text(encoding='utf-8'))
        # timm records the resolved pooling as `global_pool`; the GGAM head pools itself (`pool_type`)
        config.pop('global_pool', None)
        config.get('model_args', {}).pop('global_pool', None)
        config['pretrained_cfg'] = {k: v for k, v in config['pretrained_cfg'].items() if v is not None}
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
        tensors = safetensors.torch.load_file(str(weights))
        header = {'format': 'pt', 'architecture': arch, 'backbone': str(args.get('backbone')),
                  'ggam_layers_version': _version(), 'paper': PAPER_ID}
        if isinstance(recipe, str):
            header['recipe'] = recipe
        header.update(metadata or {})
        safetensors.torch.save_file(tensors, str(weights), metadata=header)
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


# --- publishing ----------------------------------------------------------------------------------------------------
def push_to_hub(
        model: GGAMModel,
        repo_id: str,
        *,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: str = 'Add GGAM model (ggam-layers)',
        token: Optional[str] = None,
        dry_run_dir: Optional[Union[str, Path]] = None,
        **save_kwargs,
) -> Any:
    """Save `model` with `save_pretrained` and upload the folder to the Hub repository `repo_id`.

    Creates the repository if needed (`HfApi.create_repo(exist_ok=True)`), creates the branch `revision` if it is
    missing, then uploads with `HfApi.upload_folder`. The token comes from huggingface_hub's own lookup
    (`HF_TOKEN`, then the cached `hf auth login`) unless `token` is given.

    Args:
        model: The GGAM model.
        repo_id: 'ORG/NAME' on the Hub.
        private: Create the repository private (no effect on an existing one).
        revision: Branch to commit to (created from main if missing); None commits to main.
        commit_message: The commit message.
        token: A Hub token; None uses huggingface_hub's lookup.
        dry_run_dir: Write the folder that would be uploaded here and stop: no network.
        **save_kwargs: `save_pretrained` arguments (`label_names`, `dataset`, `metrics`, `recipe`, ...).

    Returns:
        The `CommitInfo` of the upload, or the dry-run folder.
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r'[\w.\-]+/[\w.\-]+', repo_id):
        raise ValueError(f"repo_id must be 'ORG/NAME' (letters, digits, '-', '_', '.'), got {repo_id!r}")
    save_kwargs.setdefault('repo_id', repo_id)
    if dry_run_dir is not None:
        return save_pretrained(model, dry_run_dir, **save_kwargs)
    api = HfApi(token=token, library_name='ggam-layers', library_version=_version())
    with tempfile.TemporaryDirectory(prefix='ggam-push-') as tmp:
        folder = save_pretrained(model, tmp, **save_kwargs)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        repo_id = getattr(repo_url, 'repo_id', None) or repo_id
        if revision is not None and not revision.startswith('refs/'):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type='model')
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type='model', revision=revision,
                                 commit_message=commit_message)


# --- loading -------------------------------------------------------------------------------------------------------
def _refuse_pickle(path: Path) -> None:
    raise ValueError(f'{path} is a pickle checkpoint; ggam_layers loads safetensors only (a pickle can run code when '
                     f'loaded). To use it, {_CONVERT_HINT.replace("PATH", repr(str(path)))}')


def _read_config(path: Path, origin: str) -> Dict[str, Any]:
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
        return (f'{origin} names architecture {arch!r}, which ggam-layers {_version()} does not register (it '
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
                _refuse_pickle(path)
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
        _check_config(_read_config(config_file, str(config_file)), str(config_file))
        weights = folder / WEIGHTS_NAME
        if pretrained and not weights.is_file():
            pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                _refuse_pickle(pickles[0])
            raise FileNotFoundError(f'{weights} is missing (pass pretrained=False for an untrained model)')
        return name_or_path, weights, str(folder)
    if source == 'hf-hub':
        config_file = _hub_file(ident, CONFIG_NAME, cache_dir)
        origin = f'{CONFIG_NAME} of hf-hub:{ident}'
        _check_config(_read_config(config_file, origin), origin)
        weights = _hub_file(ident, WEIGHTS_NAME, cache_dir) if pretrained else None
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
                _refuse_pickle(weights)
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
    _registry()
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


# --- training checkpoints -------------------------------------------------------------------------------------------
_DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


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
            _refuse_pickle(path)
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f'checkpoint {path}: no such folder')
    config_file = path / CONFIG_NAME
    if not config_file.is_file() and path.parent.name == 'checkpoints' and (path.parents[1] / CONFIG_NAME).is_file():
        return _load_epoch_checkpoint(path)
    if not config_file.is_file():
        raise FileNotFoundError(f'{config_file} is missing: a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}'
                                ' (a run directory of `ggam-layers train`, or a folder written by save_pretrained)')
    config = _read_config(config_file, str(config_file))
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
        save_kwargs['data_config'] = {k: v for k, v in data_config.items() if k in _DATA_CONFIG_KEYS}
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


# --- command line ----------------------------------------------------------------------------------------------------
def _publish(args: argparse.Namespace) -> int:
    model, save_kwargs = load_checkpoint(args.checkpoint)
    if args.dry_run:
        folder = push_to_hub(model, args.repo_id, dry_run_dir=args.dry_run, overwrite=args.overwrite, **save_kwargs)
        files = sorted(p.name for p in Path(folder).iterdir())
        print(f'dry run: wrote {files} to {folder} (nothing uploaded); upload with the same command without --dry-run')
        return 0
    info = push_to_hub(model, args.repo_id, private=args.private, revision=args.revision,
                       commit_message=args.commit_message, **save_kwargs)
    print(f'uploaded to https://huggingface.co/{args.repo_id} ({getattr(info, "commit_url", info)})')
    print(f"load with: import ggam_layers, timm; timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def register_cli(subparsers: Any) -> List[argparse.ArgumentParser]:
    """Add the `publish` subcommand to the `ggam-layers` command line.

    Args:
        subparsers: The object returned by `ArgumentParser.add_subparsers()`.

    Returns:
        The added parsers.
    """
    p = subparsers.add_parser(
        'publish', help='convert a checkpoint to a Hugging Face Hub model folder and upload it',
        description='Convert a checkpoint folder (from `ggam-layers train`, or one written by save_pretrained) to the '
                    'folder timm reads (config.json, model.safetensors, README.md) and upload it to the Hub. The '
                    'token comes from HF_TOKEN or `hf auth login`.')
    p.add_argument('checkpoint', help='checkpoint folder (model.safetensors + config.json) or its model.safetensors')
    p.add_argument('--repo-id', required=True, help='Hub repository, ORG/NAME')
    p.add_argument('--private', action='store_true', help='create the repository private')
    p.add_argument('--revision', default=None, help='branch to commit to (created if missing); default main')
    p.add_argument('--commit-message', default='Add GGAM model (ggam-layers)', help='commit message')
    p.add_argument('--dry-run', metavar='DIR', default=None,
                   help='write the folder that would be uploaded to DIR and upload nothing')
    p.add_argument('--overwrite', action='store_true', help='with --dry-run: replace the files in a non-empty DIR')
    p.set_defaults(func=_publish)
    return [p]
