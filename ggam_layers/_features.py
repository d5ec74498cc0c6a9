"""Backbone probing for GGAM models: the layout of a timm backbone's features, token grids, and the modules a
GGAM head makes unused.

`probe_backbone` runs the backbone once on the meta device to learn its output layout (NCHW, NHWC or tokens with
prefix tokens) and reduction; `tokens_to_nchw` turns a token sequence into a map; `drop_unused_modules` replaces the
backbone's own pooling / norm / classifier modules the GGAM head replaces.
"""
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.nn as nn
from torch.func import functional_call

from ._timm_compat import register_notrace_function

__all__ = [
    'FeatureLayout', 'UnsupportedBackboneError', 'DroppedModule', 'check_image_batch', 'drop_unused_modules',
    'grid_size', 'probe_backbone', 'tokens_to_nchw']

_logger = logging.getLogger(__name__)


class UnsupportedBackboneError(ValueError):
    """The backbone gives no spatial feature map that GGAM can attend over."""


@dataclass(frozen=True)
class FeatureLayout:
    """Layout of a backbone's `forward_features` output, decided by a probe at construction.

    Attributes:
        fmt: 'NCHW', 'NHWC' or 'NLC' (token sequence).
        num_prefix_tokens: Class / distillation / register tokens before the patch tokens ('NLC' only).
        reduction: Total stride of the feature map relative to the input (of the patch grid before any merge).
        grid_rule: How an 'NLC' grid is found for an input size: 'patch_embed' (the patch embedding's
            `dynamic_feat_size`) or 'reduction' (input size // reduction).
        merge: Side of the square blocks of patch tokens that a projector merged into one token, row-major over the
            blocks (Qwen's spatial merger, DeepSeek's aligner); the grid is then ceil(patch grid / merge).
    """
    fmt: str
    num_prefix_tokens: int = 0
    reduction: int = 32
    grid_rule: str = ''
    merge: int = 1


class _ForwardFeatures(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.forward_features(x)


def _patch_embed(backbone: nn.Module) -> Optional[nn.Module]:
    # ViT-style models hold it at the top, VLM vision towers (qwen3_vit, deepseek_vit) in their encoder
    for owner in (backbone, getattr(backbone, 'encoder', None)):
        embed = getattr(owner, 'patch_embed', None)
        if hasattr(embed, 'dynamic_feat_size'):
            return embed
    return None


def grid_size(backbone: nn.Module, layout: FeatureLayout, img_hw: Tuple[int, int]) -> Tuple[int, int]:
    if layout.grid_rule == 'patch_embed':
        gh, gw = _patch_embed(backbone).dynamic_feat_size(img_hw)
    else:
        gh, gw = img_hw[0] // layout.reduction, img_hw[1] // layout.reduction
    m = layout.merge
    return -(-gh // m), -(-gw // m)


def _named_tensors(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    return list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))


def _reduction(backbone: nn.Module) -> int:
    info = getattr(backbone, 'feature_info', None)
    if info:
        last = info[-1] if isinstance(info, list) else None
        if isinstance(last, dict) and last.get('reduction'):
            return int(last['reduction'])
    return 32


def probe_backbone(backbone: nn.Module, in_chans: int, img_size: Tuple[int, int]) -> Tuple[FeatureLayout, Set[str]]:
    """Decide the feature layout with one forward on the meta device (no memory, no compute).

    Returns:
        The layout and the names of parameters that `forward_features` does not use (e.g. a dropped head's norm).
    """
    name = type(backbone).__name__
    meta = {n: p.detach().to('meta').requires_grad_(p.requires_grad) for n, p in backbone.named_parameters()}
    # one name per (module, attribute): a module shared between places (CoaT's cpe / crpe) must be swapped once,
    # or functional_call restores the meta tensor over the real one; a parameter tied between two modules gets
    # the same meta tensor in both
    by_id = {id(p): meta[n] for n, p in backbone.named_parameters()}
    by_id.update({id(b): b.to('meta') for b in backbone.buffers()})
    state, seen = {}, set()
    for n, t in _named_tensors(backbone):
        mod_name, _, attr = n.rpartition('.')
        key = (id(backbone.get_submodule(mod_name)), attr)
        if key not in seen:
            seen.add(key)
            state['model.' + n] = by_id[id(t)]
    x = torch.empty((1, in_chans) + tuple(img_size), device='meta')
    on_meta = {n for n, t in _named_tensors(backbone) if t.is_meta}  # a model built with device='meta'
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.enable_grad():
            out = functional_call(_ForwardFeatures(backbone), state, (x,), tie_weights=False)
    except Exception as e:  # an op without a meta kernel: fall back to a real forward at the same size
        _logger.debug('meta probe of %s failed (%s); probing on the CPU', name, e)
        out = None
    finally:
        backbone.train(was_training)
    moved = [n for n, t in _named_tensors(backbone) if t.is_meta and n not in on_meta]
    if moved:
        raise RuntimeError(f'the meta probe of {name} left {moved[:3]} on the meta device (a bug: please report it)')
    unused: Set[str] = set()
    if out is None:
        with torch.no_grad():
            backbone.eval()
            try:
                ref = next(backbone.parameters())
                out = backbone.forward_features(torch.zeros((1, in_chans) + tuple(img_size), device=ref.device))
            finally:
                backbone.train(was_training)
    elif isinstance(out, torch.Tensor) and out.requires_grad:
        names = [n for n, p in meta.items() if p.requires_grad]
        try:
            grads = torch.autograd.grad(out.sum(), [meta[n] for n in names], allow_unused=True)
            unused = {n for n, g in zip(names, grads) if g is None}
        except Exception as e:
            _logger.debug('meta backward of %s failed (%s); no unused parameters detected', name, e)

    if isinstance(out, (list, tuple, dict)):
        raise UnsupportedBackboneError(
            f'{name}.forward_features returns a {type(out).__name__}, not one feature map; GGAM needs a single '
            'spatial map (B x C x H x W, B x H x W x C or patch tokens B x L x C)')
    c = getattr(backbone, 'num_features', None)
    reduction = _reduction(backbone)
    if out.ndim == 4:
        fmt = 'NHWC' if str(getattr(backbone, 'output_fmt', 'NCHW')) in ('NHWC', 'Format.NHWC') else 'NCHW'
        got_c = out.shape[3] if fmt == 'NHWC' else out.shape[1]
        if c is not None and got_c != c:
            raise UnsupportedBackboneError(
                f'{name}.forward_features gives {got_c} channels in layout {fmt}, but num_features is {c}')
        return FeatureLayout(fmt, 0, reduction), unused
    if out.ndim != 3:
        raise UnsupportedBackboneError(
            f'{name}.forward_features gives shape {tuple(out.shape)} with no spatial map; GGAM needs B x C x H x W, '
            'B x H x W x C or patch tokens B x L x C')
    seq_len = out.shape[1]
    candidates = []
    if _patch_embed(backbone) is not None:
        candidates.append('patch_embed')
    candidates.append('reduction')
    declared = getattr(backbone, 'num_prefix_tokens', None)
    for merge in (1, 2, 3, 4):  # merged token grids only when no plain grid fits, and without prefix tokens
        for rule in candidates:
            gh, gw = grid_size(backbone, FeatureLayout('NLC', 0, reduction, rule, merge), img_size)
            prefix = seq_len - gh * gw
            if gh * gw > 0 and 0 <= prefix <= (16 if merge == 1 else 0) and (declared is None or prefix == declared):
                return FeatureLayout('NLC', prefix, reduction, rule, merge), unused
    raise UnsupportedBackboneError(
        f'{name}.forward_features gives {seq_len} tokens for a {img_size[0]}x{img_size[1]} input, which matches no '
        f'grid of patch tokens (declared prefix tokens: {declared}); it has no spatial map GGAM can attend over '
        '(class tokens only, or a pooled or encoder-only output)')


class DroppedModule(nn.Module):
    """Stands in for a backbone module that `forward_features` never uses: no parameters, returns its input.

    Takes `pre_logits` so that the backbone's own `forward_head` (e.g. ConvNeXt's `self.head(x, pre_logits=True)`)
    still compiles under TorchScript, which scripts every submodule's `forward`.
    """

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x


def drop_unused_modules(
        backbone: nn.Module, unused: Set[str], layout: FeatureLayout, in_chans: int, img_size: Tuple[int, int],
) -> List[str]:
    """Replace each outermost module whose parameters `forward_features` never uses by a `DroppedModule`.

    A second probe checks that the layout is unchanged and nothing else became unused; otherwise the modules are put
    back. Returns the names of the modules replaced.
    """
    dropped: Dict[str, nn.Module] = {}
    for name, module in list(backbone.named_modules()):
        if not name or any(name.startswith(d + '.') for d in dropped):
            continue
        params = [f'{name}.{n}' for n, _ in module.named_parameters()]
        if params and all(p in unused for p in params):
            parent, _, attr = name.rpartition('.')
            dropped[name] = module
            setattr(backbone.get_submodule(parent), attr, DroppedModule())
    if not dropped:
        return []
    try:
        left = unused & {n for n, _ in backbone.named_parameters()}
        ok = probe_backbone(backbone, in_chans, img_size) == (layout, left)
    except Exception as e:  # noqa: BLE001  (any failure means the module was needed)
        _logger.debug('dropping %s broke %s (%s)', sorted(dropped), type(backbone).__name__, e)
        ok = False
    if not ok:
        for name, module in dropped.items():
            parent, _, attr = name.rpartition('.')
            setattr(backbone.get_submodule(parent), attr, module)
        return []
    return sorted(dropped)


@register_notrace_function
def tokens_to_nchw(
        x: torch.Tensor, num_prefix_tokens: int, grid_size: Optional[Tuple[int, int]] = None,
) -> torch.Tensor:
    """Patch tokens B x L x C (after `num_prefix_tokens` prefix tokens) to B x C x H x W; a square grid if None.

    A leaf for torch.fx (registered with timm's notrace functions), so the token count is read on real tensors.
    """
    tokens = x[:, num_prefix_tokens:]
    n = tokens.shape[1]
    if grid_size is None:
        side = int(math.sqrt(n) + 0.5)
        if side * side != n:
            raise ValueError(f'{n} patch tokens form no square grid: pass grid_size=(H, W) to forward_head')
        grid_size = (side, side)
    if grid_size[0] * grid_size[1] != n:
        raise ValueError(f'grid_size {grid_size} does not match {n} patch tokens')
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_size[0], grid_size[1])


def check_image_batch(x: torch.Tensor, in_chans: int, min_size: int, backbone: str) -> None:
    """Raise a ValueError that says what to change unless `x` is a non-empty B x in_chans x H x W image batch."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f'x must be an image batch (B, {in_chans}, H, W), got {getattr(x, "shape", type(x).__name__)}')
    if x.shape[1] != in_chans:
        raise ValueError(f'x has {x.shape[1]} channels, but the model was built with in_chans={in_chans}; '
                         'pass in_chans to the constructor or convert the images')
    if x.shape[0] == 0:
        raise ValueError('x is an empty batch; expected B >= 1')
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f'x is {h}x{w}, too small for backbone {backbone}, whose last stage has stride {min_size}: '
                         'use images of at least that size')
