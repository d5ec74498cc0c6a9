"""The building blocks of a training run: its datasets, model, data config, optimizer, RNG state and config.json.

`ggam_layers.train` puts them together (and re-exports `build_datasets`, `build_model` and
`resolve_data_config`); `evaluate.py` and `compare.py` use them too.
"""
import logging
import math
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import __version__
from .._files import CheckpointError
from .._timm_compat import hub_mismatch
from ..attention import parts_name
from ..data.builder import create_dataset
from ..data.integrity import scan_images
from ..hub.save import ggam_model_args, model_config_json
from ..model import GGAMModel, head_param_groups, head_parameter_names
from .config import RESUME_MUTABLE_FIELDS, TrainConfig
from .distributed import DistInfo
from .progress import progress

__all__ = [
    'build_datasets', 'build_model', 'check_classes', 'resolve_data_config', 'build_dataset', 'build_optimizer',
    'build_scheduler', 'class_names_of', 'num_classes_of', 'prepare_generated', 'restore_rng_state', 'rng_state',
    'run_config_json', 'scan_data', 'usable_cores',
]

_logger = logging.getLogger(__name__)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def build_dataset(cfg: TrainConfig, split: str) -> Any:
    """The dataset of `cfg` for one split (PIL images; the synthetic sets rendered at `cfg.img_size`)."""
    kw = dict(cfg.dataset_kwargs)
    if cfg.dataset in ('synthetic', 'synthetic_pretrain'):
        kw.setdefault('image_size', cfg.img_size)  # render at the input size
        train_per_class = kw.pop('train_samples_per_class', None)  # the training split's size only
        if train_per_class is not None and split == cfg.train_split:
            kw['samples_per_class'] = train_per_class
    return create_dataset(cfg.dataset, root=cfg.data_root, split=split, **kw)


def build_datasets(cfg: TrainConfig) -> Tuple[Any, Any]:
    """The training and evaluation datasets of `cfg` (without transforms: they return PIL images)."""
    return build_dataset(cfg, cfg.train_split), build_dataset(cfg, cfg.eval_split)


def num_classes_of(ds: Any) -> int:
    """The classes of a dataset: its `num_classes`, else the length of its `class_names` / `classes`."""
    n = getattr(ds, 'num_classes', None)
    if n is None:
        names = getattr(ds, 'class_names', None) or getattr(ds, 'classes', None)
        if names is None:
            raise ValueError(f'dataset {type(ds).__name__} has no num_classes or class_names attribute')
        n = len(names)
    return int(n)


def class_names_of(ds: Any) -> Optional[List[str]]:
    """A dataset's class names (`class_names` or `classes`) as strings, or None."""
    names = getattr(ds, 'class_names', None) or getattr(ds, 'classes', None)
    return [str(n) for n in names] if names is not None else None


def check_classes(cfg: TrainConfig, datasets: Dict[str, Any]) -> None:
    """Refuse a split with fewer than two classes, before any work: with one class, cross-entropy is 0 and every
    prediction is right, so a run would report 100% top-1 whatever it learnt.

    Args:
        cfg: The run (its dataset and data root name the data in the message).
        datasets: {split name: dataset}, e.g. {cfg.train_split: train_ds, cfg.eval_split: eval_ds}.
    """
    for split, ds in datasets.items():
        n = num_classes_of(ds)
        if n >= 2:
            continue
        names = class_names_of(ds) or []
        found = f': {", ".join(repr(c) for c in names[:10])}' if names else ''
        where = f" under '{cfg.data_root}'" if cfg.data_root else ''
        raise ValueError(
            f"split '{split}' of dataset '{cfg.dataset}'{where} has {n} class{'' if n == 1 else 'es'}{found}: a "
            'classifier needs at least two (with one, the loss is 0 and top-1 is 100% whatever the model learns); '
            'give each class its own folder (root/<split>/<class>/<image>), or check --data-root')


def _fixed_input_size(name: str) -> bool:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # hf-hub: names and unknown tags
        cfg = None
    return bool(cfg is not None and cfg.fixed_input_size)


def build_model(cfg: TrainConfig, num_classes: int, pretrained: Optional[bool] = None) -> nn.Module:
    """The model of `cfg`: `timm.create_model('ggam', backbone=cfg.model, ...)` (what `wrap_timm_model` builds,
    plus timm's record of the arguments, so the saved config.json reloads with `local-dir:`; an SE or CBAM head with
    `cfg.attention`), or the plain timm model with `cfg.plain`.

    Args:
        cfg: Run config.
        num_classes: Classes of the classifier.
        pretrained: Override `cfg.pretrained` / `cfg.pretrained_file` (False when weights are loaded afterwards).
    """
    kwargs = dict(cfg.model_kwargs)
    if cfg.drop_path_rate is not None:
        kwargs['drop_path_rate'] = cfg.drop_path_rate
    if _fixed_input_size(cfg.model) and 'img_size' not in kwargs:
        kwargs['img_size'] = cfg.img_size
    use_pretrained = (cfg.pretrained or bool(cfg.pretrained_file)) if pretrained is None else pretrained
    if use_pretrained and cfg.pretrained_file:
        kwargs['pretrained_cfg_overlay'] = dict(file=str(cfg.pretrained_file))
    model = _create(cfg, num_classes, use_pretrained, kwargs)
    if pretrained is None and not cfg.resume and int(os.environ.get('RANK', '0')) == 0:
        _logger.info('backbone %s starts from %s', cfg.model, _backbone_weights(cfg, model))
    return model


def _backbone_weights(cfg: TrainConfig, model: nn.Module) -> str:
    """Where the weights of `model`'s backbone, built by `build_model(cfg, ...)`, came from, in words."""
    if not (cfg.pretrained or cfg.pretrained_file):
        return f'random initialisation (seed {cfg.seed}; no --pretrained, no --pretrained-file)'
    if cfg.pretrained_file:
        return f'the weights file {cfg.pretrained_file} (pretrained_file)'
    body = model.backbone if isinstance(model, GGAMModel) else model
    pcfg = dict(getattr(body, 'pretrained_cfg', None) or {})
    where = next((f'{what} {pcfg[key]}' for key, what in (('hf_hub_id', 'Hugging Face Hub'), ('url', 'URL'),
                                                          ('file', 'file')) if pcfg.get(key)), None)
    return f"timm's pretrained weights of {cfg.model}" + (f' ({where})' if where else '') + ' (--pretrained)'


def _create(cfg: TrainConfig, num_classes: int, use_pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    try:
        if cfg.plain:
            return timm.create_model(cfg.model, pretrained=use_pretrained, num_classes=num_classes,
                                     drop_rate=cfg.drop_rate, **kwargs)
        head: Dict[str, Any] = dict(rd_ratio=cfg.rd_ratio, drop_rate=cfg.drop_rate)
        if cfg.attention == 'ggam':
            head.update(parts=parts_name(cfg.channel_attn, cfg.spatial_attn, cfg.channel_rescale, cfg.spatial_gate),
                        spatial_norm=cfg.spatial_norm, temperature=cfg.attn_temperature, pool_type=cfg.pool_type,
                        cam_layer=cfg.cam_layer)
        else:  # an SE / CBAM head: the GGAM options do not apply
            head['attention'] = cfg.attention
        return timm.create_model('ggam', backbone=cfg.model, pretrained=use_pretrained, num_classes=num_classes,
                                 **head, **kwargs)
    except (KeyError, RuntimeError) as e:
        mismatch = hub_mismatch() if use_pretrained and 'huggingface_hub' in str(e) else None
        if mismatch:  # timm < 1.0.21 beside huggingface_hub >= 2: timm says the hub is not installed
            raise ValueError(f"the pretrained weights of {cfg.model} come from the Hugging Face Hub, and {mismatch}; "
                             'or train from random initialisation with --no-pretrained') from e
        if not (use_pretrained and cfg.pretrained_file):
            raise
        reason = ' '.join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())[:400]
        raise CheckpointError(
            f'--pretrained-file {cfg.pretrained_file} does not fit backbone {cfg.model!r} ({reason}): pass the '
            f'weights of {cfg.model} itself (a timm checkpoint of that backbone, or a ggam-layers model.safetensors '
            'trained on it), or change --model to the backbone the file was saved from') from e


def resolve_data_config(cfg: TrainConfig, model: nn.Module) -> Dict[str, Any]:
    """timm's data config of the backbone (mean, std, interpolation, crop) with the run's overrides applied."""
    from timm.data import resolve_data_config as timm_resolve
    src = model.backbone if isinstance(model, GGAMModel) else model
    dc = dict(timm_resolve({}, model=src))
    dc['input_size'] = (3, cfg.img_size, cfg.img_size)
    for key in ('crop_pct', 'crop_mode', 'interpolation', 'mean', 'std'):
        if getattr(cfg, key) is not None:
            dc[key] = getattr(cfg, key)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dc.items()}


def _param_groups(model: nn.Module, cfg: TrainConfig) -> List[Dict[str, Any]]:
    """The optimizer's parameter groups: the head at `lr`, the backbone at `lr * backbone_lr_scale` (the paper's
    split), and with `layer_decay` the backbone's layers further scaled by timm's `param_groups_layer_decay` (its
    weight decay rule too: none on biases and norms). Each group has a `name` and its base lr as `initial_lr`."""
    if cfg.layer_decay is None:  # the paper's split, as `head_param_groups` makes it
        groups = head_param_groups(model, cfg.lr, cfg.backbone_lr_scale, cfg.weight_decay)
        for g in groups:
            g['initial_lr'] = g['lr']
        return [g for g in groups if g['params']]
    head = head_parameter_names(model)
    from timm.optim import param_groups_layer_decay
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for g in param_groups_layer_decay(model, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
                                      no_weight_decay_list=getattr(model, 'no_weight_decay', set)()):
        # timm's groups are one per (layer, decay or not); `depth` counts the layers below the top one
        depth = round(math.log(g['lr_scale']) / math.log(cfg.layer_decay)) if cfg.layer_decay < 1 else 0
        suffix = '' if g['weight_decay'] else '.no_decay'
        for part in ('backbone', 'head'):
            params = [p for p in g['params'] if (names[id(p)] in head) == (part == 'head')]
            if params:
                groups.append({
                    'params': params, 'weight_decay': g['weight_decay'],
                    'lr_scale': g['lr_scale'] * (1.0 if part == 'head' else cfg.backbone_lr_scale),
                    'name': ('head' if part == 'head' else f'backbone.top-{depth}') + suffix})
    for g in groups:
        g['lr'] = g['initial_lr'] = cfg.lr * g.pop('lr_scale')
    return [g for g in groups if g['params']]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's `create_optimizer_v2` over `_param_groups` ('sgd' is timm's 'momentum': no Nesterov, as the paper)."""
    from timm.optim import create_optimizer_v2
    opt = 'momentum' if cfg.opt.lower() == 'sgd' else cfg.opt.lower()
    kwargs = {'momentum': cfg.momentum} if opt in ('momentum', 'nesterov', 'sgd', 'rmsprop', 'rmsproptf') else {}
    return create_optimizer_v2(_param_groups(model, cfg), opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int) -> Optional[Any]:
    """timm's `create_scheduler_v2` for its schedule names, stepped per update; None for the package's own 'cosine'
    and 'none' (`loop.lr_factor`)."""
    if cfg.sched in ('cosine', 'none'):
        return None
    from timm.scheduler import create_scheduler_v2
    step = max(1, int(round(cfg.decay_epochs)))
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
        decay_milestones=list(range(step, cfg.epochs, step)) or [step], decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr_ratio * cfg.lr, warmup_lr=cfg.lr / max(1, updates_per_epoch),
        warmup_epochs=cfg.warmup_epochs, warmup_prefix=True, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler


def rng_state() -> Dict[str, Any]:
    """The torch, CUDA, Python and NumPy random states, as a checkpoint stores them."""
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'python': [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set the random states `rng_state` returned (CUDA's only on the same number of devices)."""
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def prepare_generated(ds: Any, show: bool, desc: str) -> None:
    """Generate an on-demand dataset (one with `generate(i)` and a `cache`) once, up front."""
    gen = getattr(ds, 'generate', None)
    if callable(gen) and getattr(ds, 'cache', False):
        for i in progress(range(len(ds)), desc=desc, disable=not show):
            gen(i)



def run_config_json(model: nn.Module, cfg: TrainConfig, data_config: Dict[str, Any], class_names, num_classes: int,
                    command: Optional[str], tmp_parent: Optional[Path] = None) -> Dict[str, Any]:
    """timm's config.json of the model (what `local-dir:` reads) with the run under the `ggam_layers` key."""
    model_args: Dict[str, Any] = {}
    if isinstance(model, GGAMModel):
        model_args = ggam_model_args(model)
    info = {
        'version': __version__,
        'paper': 'arXiv:2101.09666',
        'dataset': {'name': cfg.dataset, 'train_split': cfg.train_split, 'eval_split': cfg.eval_split,
                    'num_classes': num_classes, **({'kwargs': cfg.dataset_kwargs} if cfg.dataset_kwargs else {})},
        'recipe': command or _recipe(cfg),
        'kind': cfg.arm,
        'data_config': data_config,
        'train_config': asdict(cfg),
    }
    model_config: Dict[str, Any] = {'ggam_layers': info}
    if class_names and len(class_names) == num_classes:
        model_config['label_names'] = list(class_names)
    return model_config_json(model, model_config=model_config, model_args=model_args, data_config=data_config,
                             tmp_parent=tmp_parent)


def _recipe(cfg: TrainConfig) -> Dict[str, Any]:
    d = asdict(cfg)
    return {k: v for k, v in d.items() if k not in RESUME_MUTABLE_FIELDS}


def scan_data(cfg: TrainConfig, datasets: Dict[str, Any], info: DistInfo, show: bool) -> Tuple[Dict[str, Any],
                                                                                                 Dict[str, Any]]:
    """Check the image files of each split once (`data.integrity.scan_images`); returns the datasets without the
    unreadable files and a report {'train': n, 'eval': n, 'files': [{'split', 'path', 'reason'}, ...]}."""
    report: Dict[str, Any] = {'files': []}
    out = {}
    for split, ds in datasets.items():
        name = f'{cfg.dataset} {getattr(cfg, f"{split}_split")}'

        def bar(indices, desc=f'checking {name} images'):
            return tqdm(indices, desc=desc, disable=not show, leave=False, dynamic_ncols=True)
        out[split], rep = scan_images(ds, strict=cfg.strict_data, max_bad_fraction=cfg.max_bad_fraction, name=name,
                                      progress=bar, log=info.is_main)
        report[split] = rep.skipped
        report['files'] += [{'split': split, 'path': b.path, 'reason': b.reason} for b in rep.bad]
    return out, report
