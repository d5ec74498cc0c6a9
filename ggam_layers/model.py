"""GGAMModel: any timm backbone followed by the GGAM head, keeping timm's model contract.

`forward_features` is the backbone's own (native layout: NCHW, NHWC or tokens); `forward_head` converts the layout
to NCHW (dropping class, distillation and register tokens), then runs attention, pooling and the classifier, so the
attention is never a no-op even for backbones that would pool a class token. `forward_ggam` returns logits, S and
Grad-CAM beta in one pass for `GGAMLoss`.

timm's model contract holds in full: `global_pool=''` with `num_classes=0` makes `forward` return the attended map D
unpooled, in the backbone's layout; `forward_intermediates`, `prune_intermediate_layers` and therefore
`features_only=True` delegate to the backbone; input checks step aside under torch.fx and TorchScript; `_model_args`
records what `timm.models.save_for_hf` needs to rebuild the model.
"""
import difflib
import logging
import re
from typing import Any, Dict, List, Optional, Set, Tuple, Type, Union

import timm
import torch
import torch.nn as nn

from ._features import (
    FeatureLayout,
    UnsupportedBackboneError,
    check_image_batch,
    drop_unused_modules,
    grid_size,
    probe_backbone,
    tokens_to_nchw,
)
from ._timm_compat import create_model
from ._trace import is_eager
from .attention import act_layer_name, resolve_parts
from .attn_head import BASELINE_ATTENTIONS, AttnPoolHead
from .head import GGAMHead, GGAMOutput

__all__ = [
    'ATTENTIONS', 'GGAMModel', 'FeatureLayout', 'GLOBAL_POOLS', 'UnsupportedBackboneError', 'check_backbone_name',
    'check_image_batch', 'prefix_names', 'tokens_to_nchw', 'wrap_timm_model', 'head_param_groups',
    'head_parameter_names']

# the head's attention: GGAM's channel-spatial attention, or one of the paper's Table 2 comparators from timm.layers
ATTENTIONS = ('ggam', *BASELINE_ATTENTIONS)

# timm's `global_pool` values a GGAM model takes: '' (no pooling: forward returns the attended map D), or the GGAM
# head's own pooling of D ('avg', 'sum', or 'auto' for the head's `pool_type` default)
GLOBAL_POOLS = ('', 'avg', 'sum', 'auto')

_logger = logging.getLogger(__name__)


def prefix_names(names: Any, prefix: str) -> Any:
    """`prefix` before a module name or each of a list / tuple of names (a pretrained cfg's `first_conv`)."""
    if isinstance(names, str):
        return prefix + names
    if isinstance(names, (list, tuple)):
        return type(names)(prefix + n for n in names)
    return names


def _prefix_pattern(pattern: Any, prefix: str) -> Any:
    if isinstance(pattern, str):
        inner = re.sub(r'(?<!\[)\^', '', pattern)
        return rf'^{re.escape(prefix)}(?:{inner})'
    if isinstance(pattern, (list, tuple)):
        return [(_prefix_pattern(p[0], prefix), *p[1:]) if isinstance(p, (list, tuple)) else _prefix_pattern(p, prefix)
                for p in pattern]
    return pattern


class GGAMModel(nn.Module):
    """A timm backbone with the GGAM head after its last stage, behaving like a timm model.

    `model(x)` returns logits; `model.forward_ggam(x)` returns a `GGAMOutput` (logits, channel_weights,
    cam_weights, ...) for `GGAMLoss`. With `num_classes=0, global_pool=''` (timm's way to ask for the unpooled map),
    `model(x)` returns the attended map D = A * T in the layout of `forward_features`: B x C x H x W, B x H x W x C,
    or B x L x C with the prefix tokens passed through unchanged and D at the patch tokens.
    """

    def __init__(
            self,
            backbone: Union[str, nn.Module] = 'resnet50',
            num_classes: int = 1000,
            in_chans: int = 3,
            backbone_pretrained: bool = False,
            backbone_args: Optional[Dict[str, Any]] = None,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            rd_divisor: int = 1,
            act_layer: Union[str, Type[nn.Module]] = 'relu',
            spatial_norm: str = 'softmax',
            parts: Optional[str] = None,
            temperature: float = 1.0,
            pool_type: str = 'auto',
            drop_rate: float = 0.,
            cam_layer: str = 'features',
            closed_form: bool = True,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            global_pool: Optional[str] = None,
            attention: str = 'ggam',
            device=None,
            dtype=None,
            *,
            channel_attn: Optional[bool] = None,
            spatial_attn: Optional[bool] = None,
            channel_rescale: Optional[bool] = None,
            spatial_gate: Optional[bool] = None,
            **kwargs,
    ):
        """
        Args:
            backbone: A timm model name or an already built timm model.
            num_classes: Classes of the GGAM classifier.
            in_chans: Input image channels.
            backbone_pretrained: Load the backbone's own pretrained weights through timm (ImageNet for most).
            backbone_args: Extra keyword arguments for `timm.create_model` of the backbone.
            rd_ratio: See `ChannelSpatialAttention`.
            rd_channels: See `ChannelSpatialAttention`.
            rd_divisor: See `ChannelSpatialAttention`.
            act_layer: See `ChannelSpatialAttention`.
            spatial_norm: See `ChannelSpatialAttention`.
            parts: Which parts of the attention run (`ChannelSpatialAttention`, `ATTENTION_PARTS`; None:
                'channel-spatial', the paper).
            temperature: See `ChannelSpatialAttention`.
            pool_type: See `GGAMHead`.
            drop_rate: Dropout before the classifier.
            cam_layer: See `GGAMHead`.
            closed_form: See `GGAMHead`.
            img_size: Input size for backbones that take one (ViT, Swin); also the probe's input size.
            global_pool: timm's pooling argument: '' returns the attended map D unpooled (needs num_classes=0);
                'avg' / 'sum' / 'auto' set the GGAM head's pooling of D (as `pool_type`); None keeps `pool_type`.
            attention: The head's attention: 'ggam' (the paper's method), or the paper's Table 2 comparators built
                from timm.layers at the same place, 'se' (`SEModule`) or 'cbam' (`CbamModule`), followed by global
                average pooling (`AttnPoolHead`; of the GGAM options only `rd_ratio` and `drop_rate` apply, and the
                model trains with cross-entropy: `forward_ggam` needs 'ggam').
            channel_attn / spatial_attn / channel_rescale / spatial_gate: Deprecated spellings of `parts` (a
                DeprecationWarning; they go in the next release).
            **kwargs: Passed on to `timm.create_model` of the backbone (e.g. `drop_path_rate`).
        """
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f'attention must be one of {ATTENTIONS}, got {attention!r}')
        if attention != 'ggam' and pool_type not in ('auto', 'avg'):
            raise ValueError(f"attention={attention!r} pools by global average: pool_type must be 'auto' or 'avg', got "
                             f'{pool_type!r}')
        parts = resolve_parts(parts, channel_attn=channel_attn, spatial_attn=spatial_attn,
                              channel_rescale=channel_rescale, spatial_gate=spatial_gate)
        pool_type = _resolve_global_pool(global_pool, pool_type, num_classes)
        backbone_args = dict(backbone_args or {}, **kwargs)
        runtime = ('pretrained_cfg', 'pretrained_cfg_overlay', 'device', 'dtype')
        self.model_args = {'backbone': backbone if isinstance(backbone, str) else None, 'in_chans': in_chans}
        if set(backbone_args) - set(runtime):
            self.model_args['backbone_args'] = {k: v for k, v in backbone_args.items() if k not in runtime}
        if img_size is not None:
            self.model_args['img_size'] = img_size
            backbone_args['img_size'] = img_size
        if isinstance(backbone, str):
            self.backbone_name = backbone
            backbone = create_backbone(backbone, backbone_pretrained, in_chans, device=device, **backbone_args)
        elif isinstance(backbone, nn.Module):
            if not hasattr(backbone, 'forward_features'):
                raise TypeError(f'backbone must be a timm model with forward_features, got {type(backbone).__name__}')
            if backbone_args:
                raise TypeError(f'backbone_args / kwargs {sorted(backbone_args)} need a backbone name, not a module')
            self.backbone_name = getattr(backbone, 'pretrained_cfg', {}).get('architecture', type(backbone).__name__)
            if getattr(backbone, 'num_classes', 0):
                backbone.reset_classifier(0)
        else:
            raise TypeError(f'backbone must be a timm model name or module, got {type(backbone).__name__}')
        self.backbone = backbone
        self.in_chans = in_chans
        cfg = getattr(backbone, 'pretrained_cfg', {}) or {}
        probe_size = tuple(cfg.get('input_size', (in_chans, 224, 224))[-2:])
        if img_size is not None:
            probe_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.layout, unused = probe_backbone(backbone, in_chans, probe_size)
        self.unused_backbone_params = sorted(unused)
        # whole modules that forward_features never uses (a ConvNeXt head norm, VGG's pre-logits MLP) go, so that
        # every parameter gets a gradient (timm's tests, DDP); what is left unused inside used modules is frozen
        self.dropped_backbone_modules = drop_unused_modules(backbone, unused, self.layout, in_chans, probe_size)
        for n, p in backbone.named_parameters():
            if n in unused:
                p.requires_grad_(False)
        self.num_features = self.head_hidden_size = backbone.num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.attention = attention
        self.head: Union[GGAMHead, AttnPoolHead]
        if attention == 'ggam':
            self.head = GGAMHead(
                self.num_features, num_classes, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                act_layer=act_layer, spatial_norm=spatial_norm, parts=parts, temperature=temperature,
                pool_type=pool_type, drop_rate=drop_rate, cam_layer=cam_layer, closed_form=closed_form, device=device,
                dtype=dtype)
        else:
            self.head = AttnPoolHead(self.num_features, num_classes, attention=attention, rd_ratio=rd_ratio,
                                     drop_rate=drop_rate, device=device, dtype=dtype)
        if dtype is not None:
            self.backbone.to(dtype=dtype)
        self.feature_info = [dict(info, module=f'backbone.{info["module"]}') if 'module' in info else dict(info)
                             for info in (backbone.feature_info if isinstance(backbone.feature_info, list) else [])]
        self.pretrained_cfg = self.default_cfg = dict(
            cfg, architecture='ggam', num_classes=num_classes, classifier='head.fc',
            first_conv=prefix_names(cfg.get('first_conv'), 'backbone.'))
        self.model_args['backbone'] = self.backbone_name
        self._fmt = self.layout.fmt
        self._num_prefix_tokens = self.layout.num_prefix_tokens
        if self._fmt == 'NHWC':
            self.output_fmt = 'NHWC'  # as the backbone declares it: timm's tests and feature tools read it
        self.global_pool = ''
        self._set_global_pool('' if global_pool == '' else self.head.pool_type)
        self.head_pruned = False
        # what timm.create_model records: timm.models.save_for_hf writes it to config.json as model_args
        self._model_args = dict(self.model_args, **self.head_args(act_layer))

    def head_args(self, act_layer: Optional[Union[str, Type[nn.Module]]] = None) -> Dict[str, Any]:
        """The head's constructor arguments as resolved (the one list of them): the attention, its `parts` and
        options, the hidden width `rd_channels` rather than `rd_ratio`, the resolved `pool_type` rather than 'auto'.

        Args:
            act_layer: Recorded as the channel attention's activation when its module has no timm name; None raises
                ValueError then (config.json needs a name).
        """
        head = self.head
        if isinstance(head, AttnPoolHead):
            return dict(attention=head.attention, rd_ratio=head.rd_ratio, pool_type=head.pool_type)
        attn = head.attn
        args: Dict[str, Any] = dict(parts=attn.parts, spatial_norm=attn.spatial_norm, temperature=attn.temperature,
                                    pool_type=head.pool_type, cam_layer=head.cam_layer, closed_form=head.closed_form)
        if attn.channel_attn:
            name = act_layer_name(attn.act)
            if name is None and act_layer is None:
                raise ValueError(f'the channel attention uses activation {type(attn.act).__name__}, which has no timm '
                                 "name to record in config.json; pass model_args={'act_layer': '<timm name>'}")
            args.update(rd_channels=attn.rd_channels, act_layer=name if name is not None else act_layer)
        return args

    def _set_global_pool(self, global_pool: str) -> None:
        self.global_pool = global_pool
        # timm's exporters read the pooling from `head.global_pool` first (timm.models._input._get_global_pool)
        self.head.global_pool = global_pool

    # --- timm model contract -------------------------------------------------------------------------------------
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'head.fc' if name_only else self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for `num_classes` (0 removes it).

        Args:
            num_classes: Classes of the new classifier; 0 for none (`forward` then returns pooled features).
            global_pool: None keeps the pooling; '' removes it (needs `num_classes=0`: `forward` returns the
                attended map D in the backbone's layout); 'avg', 'sum' or 'auto' set the head's pooling of D.
        """
        if self.head_pruned:
            raise RuntimeError('prune_intermediate_layers(prune_head=True) removed the GGAM head; build a new model')
        if global_pool is None:
            if self.global_pool == '' and num_classes > 0:
                raise ValueError(f'reset_classifier(num_classes={num_classes}) on an unpooled model needs a pooling: '
                                 "pass global_pool='avg', 'sum' or 'auto'")
        else:
            pool_type = _resolve_global_pool(global_pool, 'auto', num_classes)
            if pool_type == 'auto':
                pool_type = self.head.auto_pool_type()
            if isinstance(self.head, AttnPoolHead) and pool_type != 'avg':
                raise ValueError(f"global_pool={global_pool!r}: the {self.attention} head pools by global average "
                                 "('avg', 'auto' or '')")
            self.head.pool_type = pool_type
            self._set_global_pool('' if global_pool == '' else pool_type)
            self._model_args['pool_type'] = pool_type
        self.num_classes = num_classes
        ref = next(self.head.parameters(), None)  # a head without parameters takes the backbone's dtype
        ref = ref if ref is not None else next(self.backbone.parameters(), None)
        self.head.reset_classifier(num_classes, device=ref.device if ref is not None else None,
                                   dtype=ref.dtype if ref is not None else None)
        self.pretrained_cfg = self.default_cfg = dict(self.pretrained_cfg, num_classes=num_classes)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """The backbone's parameter groups, prefixed with `backbone.`, then any other backbone parameter.

        The GGAM head matches no pattern, so timm's layer decay puts it in the last group (full learning rate), as
        it does with timm's own classifier heads.
        """
        fn = getattr(self.backbone, 'group_matcher', None)
        matcher = {k: _prefix_pattern(v, 'backbone.') for k, v in fn(coarse=coarse).items()} if fn else {}
        matcher['backbone_rest'] = r'^backbone\.'
        return matcher

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        fn = getattr(self.backbone, 'no_weight_decay', None)
        return {f'backbone.{n}' for n in fn()} if fn else set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    # --- forward -------------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> Tuple[int, int]:
        check_image_batch(x, self.in_chans, self.layout.reduction, self.backbone_name)
        return x.shape[-2], x.shape[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features A in its native layout (timm contract)."""
        if not torch.jit.is_scripting():
            if is_eager():  # clear errors in eager mode; FX proxies and traced graphs are not checked
                self._check_input(x)
        return self.backbone.forward_features(x)

    def features_to_nchw(self, x: torch.Tensor, grid_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Backbone features in native layout to B x C x H x W, without prefix tokens.

        Args:
            x: Output of `forward_features`.
            grid_size: (H, W) of the patch grid, for token sequences of non-square inputs.
        """
        if self._fmt == 'NCHW':
            return x
        if self._fmt == 'NHWC':
            return x.permute(0, 3, 1, 2)
        return tokens_to_nchw(x, self._num_prefix_tokens, grid_size)

    def nchw_to_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """A B x C x H x W map (such as D) back to the layout of `features`, the output of `forward_features`.

        Token layouts get the prefix tokens of `features` back in front, unchanged.
        """
        if self._fmt == 'NCHW':
            return x
        if self._fmt == 'NHWC':
            return x.permute(0, 2, 3, 1)
        return torch.cat([features[:, :self._num_prefix_tokens], x.flatten(2).transpose(1, 2)], dim=1)

    def forward_head(
            self, x: torch.Tensor, pre_logits: bool = False, grid_size: Optional[Tuple[int, int]] = None,
    ) -> torch.Tensor:
        """Attention, pooling and classifier on `forward_features` output (timm contract).

        With `global_pool=''` it returns the attended map D in the layout of `x`, pooled by no one.
        """
        if self.head_pruned:
            return x
        feats = self.features_to_nchw(x, grid_size)
        if self.global_pool == '':
            return self.nchw_to_features(self.head.attn(feats), x)
        return self.head(feats, pre_logits=pre_logits)

    def grid_size(self, img_hw: Tuple[int, int]) -> Optional[Tuple[int, int]]:
        """(h, w) grid of the patch tokens for an input of `img_hw`; None for NCHW / NHWC backbones."""
        return grid_size(self.backbone, self.layout, tuple(img_hw)) if self.layout.fmt == 'NLC' else None

    def _grid(self, x: torch.Tensor) -> Optional[Tuple[int, int]]:
        grid: Optional[Tuple[int, int]] = None
        if not torch.jit.is_scripting():
            if self._fmt == 'NLC' and is_eager():  # traced and scripted graphs infer a square grid
                grid = self.grid_size((x.shape[-2], x.shape[-1]))
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._grid(x)
        return self.forward_head(self.forward_features(x), grid_size=grid)

    def forward_ggam(self, x: torch.Tensor, classes: Optional[torch.Tensor] = None) -> GGAMOutput:
        """Logits, channel weights S, Grad-CAM weights beta (and T) in one forward pass.

        Args:
            x: Images, B x in_chans x H x W.
            classes: Class per sample for the Grad-CAM weights; the predicted class when None (paper).
        """
        if self.head_pruned:
            raise RuntimeError('forward_ggam needs the GGAM head, which prune_intermediate_layers removed')
        if self.attention != 'ggam':
            raise RuntimeError(f'forward_ggam needs the GGAM head; this model has attention={self.attention!r}, '
                               'which trains with cross-entropy on model(x)')
        feats = self.features_to_nchw(self.forward_features(x), self._grid(x))
        return self.head.forward_ggam(feats, classes)

    # --- feature extraction (timm API, delegated to the backbone) -------------------------------------------------
    def _backbone_method(self, name: str) -> Any:
        fn = getattr(self.backbone, name, None)
        if fn is None:
            raise NotImplementedError(
                f'backbone {self.backbone_name} ({type(self.backbone).__name__}) has no {name}; a GGAM model\'s '
                'forward_intermediates, prune_intermediate_layers and features_only=True delegate to the backbone')
        return fn

    @torch.jit.ignore
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            **kwargs,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The backbone's `forward_intermediates`: its final features A and the maps at `indices` of `feature_info`.

        Args:
            x: Images, B x in_chans x H x W.
            indices: Take the last n levels if an int, the listed levels if a sequence, all if None.
            norm: Apply the backbone's final norm to every intermediate.
            stop_early: Stop after the last level taken.
            output_fmt: Layout of the intermediates, as the backbone supports ('NCHW', 'NHWC', ...).
            intermediates_only: Return only the intermediates.
            **kwargs: Further backbone options (e.g. `return_prefix_tokens` for ViTs).
        """
        fn = self._backbone_method('forward_intermediates')
        if is_eager():
            self._check_input(x)
        return fn(x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
                  intermediates_only=intermediates_only, **kwargs)

    @torch.jit.ignore
    def prune_intermediate_layers(
            self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> List[int]:
        """Prune the backbone's layers after the last level of `indices` (timm API); `prune_head` also drops the
        GGAM head (attention and classifier), as `features_only=True` does. Returns the kept indices."""
        prune = self._backbone_method('prune_intermediate_layers')
        # a backbone whose head modules were dropped at construction cannot reset them again
        take = prune(indices, prune_norm=prune_norm, prune_head=prune_head and not self.dropped_backbone_modules)
        if prune_head:
            self.head = nn.Identity()
            self.head_pruned = True
            self.num_classes = 0
            self.global_pool = ''
        return take


def _resolve_global_pool(global_pool: Optional[str], pool_type: str, num_classes: int) -> str:
    """The head's `pool_type` for timm's `global_pool` argument (None keeps `pool_type`)."""
    if global_pool is None:
        return pool_type
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f'global_pool must be one of {GLOBAL_POOLS} or None, got {global_pool!r} (the GGAM head '
                         "pools the attended map itself; '' returns it unpooled)")
    if global_pool == '':
        if num_classes:
            raise ValueError(f"global_pool='' (no pooling) needs num_classes=0, got num_classes={num_classes}")
        return pool_type
    if global_pool != 'auto' and pool_type not in ('auto', global_pool):
        raise ValueError(f'global_pool={global_pool!r} and pool_type={pool_type!r} disagree; pass one of them')
    return pool_type if global_pool == 'auto' else global_pool


def check_backbone_name(name: Any, what: str = 'backbone') -> None:
    """Refuse a name timm does not know (a model name, or `hf-hub:` / `local-dir:`), with the closest names.

    Args:
        name: The backbone name.
        what: How the message names the argument ('backbone', 'model', ...).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'{what} must be a timm backbone name, got {name!r}')
    if name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split('.')[0], timm.list_models(), n=5)
    raise ValueError(f'{what} {name!r} is not a timm backbone' + (f'; did you mean one of {close}?' if close else '')
                     + ' (timm.list_models() lists them all)')


def create_backbone(
        name: str, pretrained: bool = False, in_chans: int = 3, device=None, **kwargs,
) -> nn.Module:
    """`timm.create_model(name, num_classes=0)` with errors that say what to change."""
    check_backbone_name(name)
    try:
        return create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, device=device, **kwargs)
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise RuntimeError(
            f'could not load pretrained weights for backbone {name!r} ({e}). Offline, point timm at a local file: '
            f"wrap_timm_model({name!r}, pretrained=True, pretrained_cfg_overlay=dict(file='/path/weights.safetensors'"
            '))') from e


def wrap_timm_model(
        model_or_name: Union[str, nn.Module],
        num_classes: int = 1000,
        pretrained: bool = False,
        **kwargs,
) -> GGAMModel:
    """Put the GGAM head after the last stage of a timm backbone.

    Args:
        model_or_name: A timm model name (any of `timm.list_models()`, or `hf-hub:` / `local-dir:`) or a built model.
        num_classes: Classes of the GGAM classifier.
        pretrained: Load the backbone's pretrained weights through timm (the attention and classifier start fresh).
        **kwargs: GGAM options (see `GGAMModel`), and any other timm keyword argument for the backbone
            (`drop_path_rate`, `img_size`, `pretrained_cfg_overlay=dict(file=...)` for a local weights file, ...).
    """
    return GGAMModel(model_or_name, num_classes=num_classes, backbone_pretrained=pretrained, **kwargs)


def head_parameter_names(model: nn.Module) -> Set[str]:
    """Names of the head's parameters: the GGAM (or SE / CBAM) head of a GGAM model, a timm model's classifier."""
    if isinstance(model, GGAMModel):
        modules = [model.head]
    else:  # timm's get_classifier() may give a tuple of modules
        clf = model.get_classifier()
        modules = [m for m in (clf if isinstance(clf, (tuple, list)) else (clf,)) if isinstance(m, nn.Module)]
    ids = {id(p) for m in modules for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def head_param_groups(
        model: nn.Module, lr: float, backbone_lr_scale: float = 0.1, weight_decay: float = 0.,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups of the paper's recipe: the head at `lr`, the backbone at `lr * backbone_lr_scale`.

    Args:
        model: A GGAM model (the head: attention and classifier), or a plain timm model (the head: its classifier).
        lr: Learning rate of the attention and classifier (the paper: 0.1).
        backbone_lr_scale: The backbone's learning rate relative to `lr` (the paper: 0.1).
        weight_decay: Weight decay of both groups (the paper: 5e-4).
    """
    names = head_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in named if n in names]
    backbone = [p for n, p in named if n not in names]
    return [
        {'params': backbone, 'lr': lr * backbone_lr_scale, 'weight_decay': weight_decay, 'name': 'backbone'},
        {'params': head, 'lr': lr, 'weight_decay': weight_decay, 'name': 'head'},
    ]
