"""GGAM model entrypoints registered with timm.

After `import ggam_layers`, `timm.create_model('ggam_resnet50', num_classes=200)` builds the paper's model and
`timm.list_models('ggam*')` lists them. `ggam` is the generic entrypoint: `timm.create_model('ggam',
backbone='convnext_tiny')` wraps any timm backbone, and its `config.json` records the backbone, so a saved model
reloads through `hf-hub:` or `local-dir:`.

`pretrained=True` on a named model's default tag loads the backbone's ImageNet weights from timm's Hub repository
into the backbone (the attention and classifier start fresh); tags that name GGAM checkpoints load those. A tag whose
weights were trained with other architecture arguments than the entrypoint's defaults lists them in `TAG_MODEL_ARGS`,
and `timm.create_model('NAME.TAG')` builds that architecture (the embedded `ggam_test_resnet.synthetic` is
test_resnet at output stride 16: a 7 x 7 map at 112 px); arguments passed to `create_model` still win.

`features_only=True` gives timm's feature extractor over the backbone's `forward_intermediates` (`feature_cls='getter'`,
the default) or over an FX graph (`feature_cls='fx'`); `feature_info` names the backbone's modules with the `backbone.`
prefix. The default `out_indices` are all of the backbone's levels when it has at most 6 (CNNs, Swin), else its last
3 (ViTs: one level per block, timm's own default for them).
"""
import json
import os
from typing import Any, Dict, List, Optional, Union

import torch
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
    resolve_pretrained_cfg,
)

from ._files import PRETRAINED_DIR
from ._timm_compat import create_model, safetensors_source
from .model import GGAMModel, prefix_names

# entrypoints are appended by register_model
__all__ = ['GGAM_BACKBONES', 'TAG_MODEL_ARGS', 'checkpoint_filter_fn', 'create_ggam']

# entrypoint name -> (backbone, backbone pretrained tag whose ImageNet weights the default tag loads)
GGAM_BACKBONES = {
    'ggam_resnet50': ('resnet50', 'a1_in1k'),
    'ggam_resnet101': ('resnet101', 'a1h_in1k'),
    'ggam_vgg19_bn': ('vgg19_bn', 'tv_in1k'),
    'ggam_convnext_tiny': ('convnext_tiny', 'fb_in22k_ft_in1k'),
    'ggam_convnext_base': ('convnext_base', 'fb_in22k_ft_in1k'),
    'ggam_swin_base_patch4_window7_224': ('swin_base_patch4_window7_224', 'ms_in22k_ft_in1k'),
    'ggam_vit_base_patch16_224': ('vit_base_patch16_224', 'augreg2_in21k_ft_in1k'),
    'ggam_deit_small_patch16_224': ('deit_small_patch16_224', 'fb_in1k'),
    'ggam_efficientnet_b3': ('efficientnet_b3', 'ra2_in1k'),
    'ggam_test_resnet': ('test_resnet', 'r160_in1k'),
}



# model arguments that a tag's weights were trained with, beyond the entrypoint's defaults: a tag load reads only the
# weights, so `timm.create_model('NAME.TAG')` builds this architecture (arguments given to create_model still win)
TAG_MODEL_ARGS: Dict[str, Dict[str, Any]] = {
    'ggam_test_resnet.synthetic': {'backbone_args': {'output_stride': 16}},  # 7 x 7 final map at 112 px
}


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GGAMModel) -> Dict[str, torch.Tensor]:
    """Load a GGAM checkpoint as is, or a plain backbone checkpoint into the backbone with a fresh GGAM head.

    A plain timm checkpoint (no `backbone.` keys) gets the prefix; its classifier is dropped; the head's entries
    come from the model's own fresh initialisation, so loading stays strict for every backbone key.
    """
    if 'state_dict' in state_dict:
        state_dict = state_dict['state_dict']
    if any(k.startswith('backbone.') for k in state_dict):
        # backbone modules the model dropped as unused (GGAMModel.dropped_backbone_modules) have no place to load
        dropped = tuple(f'backbone.{m}.' for m in getattr(model, 'dropped_backbone_modules', ()))
        return {k: v for k, v in state_dict.items() if not (dropped and k.startswith(dropped))}
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        key = f'backbone.{k}'
        if key in own:
            out[key] = v
    missing = [k for k in own if k.startswith('backbone.') and k not in out]
    if missing:
        raise KeyError(
            f'backbone checkpoint does not fit {model.backbone_name}: {len(missing)} backbone keys are missing, '
            f'e.g. {missing[:3]} (keys in the file look like {list(state_dict)[:3]})')
    out.update({k: v for k, v in own.items() if k.startswith('head.')})
    return out


def create_ggam(variant: str, pretrained: bool = False, **kwargs) -> GGAMModel:
    """Build a registered GGAM variant through `timm.models.build_model_with_cfg`.

    Args:
        variant: Entrypoint name.
        pretrained: Load the weights of the resolved pretrained tag; on a tag with no weights source, load the
            backbone's own pretrained weights instead.
        **kwargs: `GGAMModel` arguments (`backbone` is fixed for named variants).
    """
    feature_cfg = _feature_cfg(kwargs) if kwargs.get('features_only') else None
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.pop('pretrained_cfg', None),
        pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None))
    _apply_tag_model_args(kwargs, TAG_MODEL_ARGS.get(f'{variant}.{cfg.tag}'))
    if pretrained:
        cfg = safetensors_source(cfg)
    has_source = any(getattr(cfg, k, None) for k in ('hf_hub_id', 'url', 'file', 'state_dict'))
    if pretrained and not has_source:
        kwargs['backbone_pretrained'] = True
        pretrained = False
    model = build_model_with_cfg(
        GGAMModel, variant, pretrained, pretrained_cfg=cfg, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=feature_cfg, **kwargs)
    if variant == 'ggam' and not has_source and feature_cfg is None:
        # the generic entrypoint's data config is its backbone's (input size, pool size, mean, std, ...)
        model.pretrained_cfg = model.default_cfg = dict(
            _data_cfg(getattr(model.backbone, 'pretrained_cfg', None) or {}),
            **{k: v for k, v in model.pretrained_cfg.items() if k in ('architecture', 'tag', 'license')},
            num_classes=model.num_classes, classifier='head.fc')
    return model


def _apply_tag_model_args(kwargs: Dict[str, Any], tag_args: Optional[Dict[str, Any]]) -> None:
    """Add a tag's architecture arguments to `kwargs` in place, under what the caller passed."""
    for key, value in (tag_args or {}).items():
        if key == 'backbone_args':
            kwargs['backbone_args'] = {**value, **(kwargs.get('backbone_args') or {})}
        else:
            kwargs.setdefault(key, value)


_FEATURE_CLS = ('getter', 'fx')


def _feature_cfg(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """timm's `feature_cfg` for `features_only=True`, taking `out_indices`, `feature_cls` etc. out of `kwargs`."""
    cfg = dict(kwargs.pop('feature_cfg', None) or {})
    for key in ('out_indices', 'feature_cls', 'output_fmt', 'norm'):
        if key in kwargs:
            cfg[key] = kwargs.pop(key)
    feature_cls = cfg.setdefault('feature_cls', 'getter')
    if feature_cls not in _FEATURE_CLS:
        raise ValueError(f'feature_cls must be one of {_FEATURE_CLS} for a GGAM model, got {feature_cls!r} (the '
                         "backbone's forward_intermediates, or an FX graph of the wrapped model)")
    if cfg.get('out_indices') is None:
        cfg['out_indices'] = _default_out_indices(kwargs.get('backbone', 'resnet50'), kwargs.get('backbone_args'))
    return cfg


def _default_out_indices(backbone: str, backbone_args: Any = None) -> Union[int, tuple]:
    """All levels of the backbone's `feature_info` if it has at most 6, else the last 3 (one level per block)."""
    probe = create_model(backbone, num_classes=0, device='meta', **dict(backbone_args or {}))
    levels = len(probe.feature_info)
    if not hasattr(probe, 'forward_intermediates'):
        raise NotImplementedError(f'backbone {backbone} has no forward_intermediates, which features_only=True of a '
                                  'GGAM model delegates to')
    return tuple(range(levels)) if levels <= 6 else 3


def _data_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """A backbone's pretrained cfg without its weights source, its classifier prefixed for the GGAM model."""
    drop = ('architecture', 'tag', 'classifier', 'hf_hub_id', 'hf_hub_filename', 'url', 'file', 'state_dict',
            'source', 'custom_load', 'label_names', 'label_descriptions', 'label_offset')
    out = {k: v for k, v in cfg.items() if v is not None and k not in drop}
    if out.get('first_conv'):
        out['first_conv'] = prefix_names(out['first_conv'], 'backbone.')
    return out


def _backbone_cfg(backbone: str, tag: str, **kwargs) -> Dict[str, Any]:
    base = get_pretrained_cfg(f'{backbone}.{tag}')
    cfg = base.to_dict() if base is not None else {}
    cfg = {k: v for k, v in cfg.items() if v is not None and k not in ('architecture', 'tag', 'classifier')}
    if cfg.get('first_conv'):
        cfg['first_conv'] = prefix_names(cfg['first_conv'], 'backbone.')
    cfg.update(classifier='head.fc', license='apache-2.0')
    cfg.update(kwargs)
    return cfg


def _embedded_label_names(tag: str) -> Optional[List[str]]:
    """The class names of an embedded model, from the config.json shipped beside its weights."""
    path = os.path.join(PRETRAINED_DIR, f'{tag}.json')
    try:
        with open(path, encoding='utf-8') as f:
            names = json.load(f).get('label_names')
    except (OSError, ValueError):  # a broken installation: the model still loads, with class indices for names
        return None
    return list(names) if names else None


default_cfgs = generate_default_cfgs({
    'ggam': {'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'classifier': 'head.fc',
             'license': 'apache-2.0'},
    **{f'{name}.{tag}': _backbone_cfg(backbone, tag) for name, (backbone, tag) in GGAM_BACKBONES.items()},
    # shipped inside the package (no network): see ggam_layers/pretrained/README.md for how it was made
    'ggam_test_resnet.synthetic': {
        'file': os.path.join(PRETRAINED_DIR, 'ggam_test_resnet.synthetic.safetensors'),
        'num_classes': 20, 'input_size': (3, 112, 112), 'pool_size': (7, 7), 'crop_pct': 1.0, 'crop_mode': 'center',
        'interpolation': 'bilinear', 'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5), 'classifier': 'head.fc',
        'first_conv': 'backbone.conv1.0', 'license': 'apache-2.0', 'paper_ids': 'arXiv:2101.09666',
        'label_names': _embedded_label_names('ggam_test_resnet.synthetic')},
    # A whole-model GGAM checkpoint gets its tag here once its weights are published (docs/predict.md, 'Your own
    # weights'); a tag without weights is never listed.
})


def _create_named(name: str, pretrained: bool, **kwargs) -> GGAMModel:
    backbone = GGAM_BACKBONES[name][0]
    if kwargs.setdefault('backbone', backbone) != backbone:
        raise ValueError(f'{name} is fixed to backbone {backbone!r}; use timm.create_model("ggam", backbone=...)')
    return create_ggam(name, pretrained, **kwargs)


@register_model
def ggam(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after any timm backbone: `timm.create_model('ggam', backbone='resnet50', num_classes=200)`."""
    return create_ggam('ggam', pretrained, **kwargs)




@register_model
def ggam_resnet50(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after ResNet-50, the paper's main model (CUB-200-2011 88.45% top-1 in the paper)."""
    return _create_named('ggam_resnet50', pretrained, **kwargs)


@register_model
def ggam_resnet101(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after ResNet-101."""
    return _create_named('ggam_resnet101', pretrained, **kwargs)


@register_model
def ggam_vgg19_bn(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after VGG-19 (with BatchNorm), the paper's second backbone."""
    return _create_named('ggam_vgg19_bn', pretrained, **kwargs)


@register_model
def ggam_convnext_tiny(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after ConvNeXt-Tiny."""
    return _create_named('ggam_convnext_tiny', pretrained, **kwargs)


@register_model
def ggam_convnext_base(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after ConvNeXt-Base."""
    return _create_named('ggam_convnext_base', pretrained, **kwargs)


@register_model
def ggam_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after Swin-B (NHWC features)."""
    return _create_named('ggam_swin_base_patch4_window7_224', pretrained, **kwargs)


@register_model
def ggam_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after ViT-B/16 (patch tokens; the class token is dropped)."""
    return _create_named('ggam_vit_base_patch16_224', pretrained, **kwargs)


@register_model
def ggam_deit_small_patch16_224(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after DeiT-S/16 (patch tokens; the class token is dropped)."""
    return _create_named('ggam_deit_small_patch16_224', pretrained, **kwargs)


@register_model
def ggam_efficientnet_b3(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after EfficientNet-B3."""
    return _create_named('ggam_efficientnet_b3', pretrained, **kwargs)


@register_model
def ggam_test_resnet(pretrained: bool = False, **kwargs) -> GGAMModel:
    """GGAM after timm's tiny test_resnet (tests and the embedded synthetic model)."""
    return _create_named('ggam_test_resnet', pretrained, **kwargs)
