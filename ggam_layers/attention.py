"""Channel-spatial attention of GGAM (eq. 1 to 3 of the paper).

Xu, Chang, Xie, Ma, "Grad-CAM guided channel-spatial attention module for fine-grained visual classification",
arXiv 2101.09666.

    S = softmax(fc2(act(fc1(GAP(A)))) / tau)       channel attention, a distribution over C channels
    B = S * A                                     eq. 1
    u = sum_c B_c                                 channel sum, H x W
    T = norm(u)                                   eq. 3: softmax (paper text), u / sum(u) (eq. 3) or sigmoid (code)
    D = A * T                                     eq. 2, what the classifier sees
    D = A * (1 - g + g * N T)                     with parts='channel-spatial-gated' (ours): g a learned scalar
                                                  from 0, N T has mean 1 (softmax / sum norms; T for sigmoid)
"""
import warnings
from typing import Dict, NamedTuple, Optional, Type, Union

import torch
import torch.nn as nn
from timm.layers import create_act_layer, make_divisible

from ._trace import is_eager

__all__ = ['ATTENTION_PARTS', 'AttentionParts', 'LEGACY_SWITCHES', 'AttentionResult', 'ChannelSpatialAttention',
           'SPATIAL_NORMS', 'act_layer_name', 'check_features', 'parts_name', 'resolve_parts']

SPATIAL_NORMS = ('softmax', 'sum', 'sigmoid')


class AttentionParts(NamedTuple):
    """Which parts of eq. 1-3 a `ChannelSpatialAttention` runs: the learned channel softmax S (else S = 1/C), the
    spatial map T, the gain C on S * A of the channel-only head, the learned gate on T."""
    channel: bool
    spatial: bool
    rescale: bool = False
    gate: bool = False


# `parts`: the paper's attention, each half alone (the paper's Table 3 ablation), none, and two variants of ours
ATTENTION_PARTS: Dict[str, AttentionParts] = {
    'channel-spatial': AttentionParts(True, True),  # the paper: D = A * T, T from S * A
    'channel': AttentionParts(True, False),  # eq. 1 only: D = S * A
    'spatial': AttentionParts(False, True),  # S = 1/C: T from the channel mean of A
    'none': AttentionParts(False, False),  # D = A
    'channel-rescaled': AttentionParts(True, False, rescale=True),  # ours: D = C * S * A (a uniform S passes A)
    'channel-spatial-gated': AttentionParts(True, True, gate=True),  # ours: D = A * (1 - g + g N T), g from 0
    'spatial-gated': AttentionParts(False, True, gate=True),  # ours: the gate on the channel-mean map
}

# the boolean switches `parts` replaced (one release of deprecation)
LEGACY_SWITCHES = ('channel_attn', 'spatial_attn', 'channel_rescale', 'spatial_gate')


def resolve_parts(parts: Optional[str] = None, *, channel_attn: Optional[bool] = None,
                  spatial_attn: Optional[bool] = None, channel_rescale: Optional[bool] = None,
                  spatial_gate: Optional[bool] = None, stacklevel: int = 3) -> str:
    """The name in `ATTENTION_PARTS` of `parts`, or of the deprecated boolean switches (with a DeprecationWarning).

    Args:
        parts: A name of `ATTENTION_PARTS`; None is 'channel-spatial' unless switches are given.
        channel_attn / spatial_attn / channel_rescale / spatial_gate: The switches of earlier releases; None: not
            given. They may not be combined with `parts`.
        stacklevel: Of the warning (the caller of the public constructor).
    """
    given = {k: v for k, v in zip(LEGACY_SWITCHES, (channel_attn, spatial_attn, channel_rescale, spatial_gate))
             if v is not None}
    if given:
        if parts is not None:
            raise ValueError(f'parts={parts!r} names the attention parts, and {", ".join(sorted(given))} set them too: '
                             'pass parts= alone')
        warnings.warn(f'{", ".join(sorted(given))} are deprecated: pass parts= (one of {tuple(ATTENTION_PARTS)})',
                      DeprecationWarning, stacklevel=stacklevel)
        parts = parts_name(given.get('channel_attn', True), given.get('spatial_attn', True),
                           given.get('channel_rescale', False), given.get('spatial_gate', False))
    parts = 'channel-spatial' if parts is None else parts
    if parts not in ATTENTION_PARTS:
        raise ValueError(f'parts must be one of {tuple(ATTENTION_PARTS)}, got {parts!r}')
    return parts


def parts_name(channel_attn: bool, spatial_attn: bool, channel_rescale: bool = False,
               spatial_gate: bool = False) -> str:
    """The `ATTENTION_PARTS` name of a combination of the switches; ValueError for one that has no meaning."""
    if channel_rescale and spatial_attn:
        raise ValueError('channel_rescale=True scales eq. 1 (B = S * A) by C and needs spatial_attn=False; with '
                         'the spatial map S only shapes T')
    if spatial_gate and not spatial_attn:
        raise ValueError('spatial_gate=True gates the spatial map T and needs spatial_attn=True')
    rescale = bool(channel_rescale and channel_attn)  # without S, C * S * A is A: the switch changed nothing
    want = AttentionParts(bool(channel_attn), bool(spatial_attn), rescale, bool(spatial_gate))
    return next(name for name, p in ATTENTION_PARTS.items() if p == want)


def act_layer_name(act: nn.Module) -> Optional[str]:
    """The timm name (`timm.layers.get_act_layer`) of an activation module's class, None if it has none."""
    from timm.layers import get_act_layer
    for name in _ACT_NAMES:
        try:
            if type(act) is get_act_layer(name):
                return name
        except (KeyError, ValueError, TypeError):
            continue
    return None


# activations the channel attention may use, by timm name (get_act_layer resolves each to a class)
_ACT_NAMES = ('relu', 'gelu', 'gelu_tanh', 'quick_gelu', 'silu', 'swish', 'mish', 'sigmoid', 'tanh', 'hard_sigmoid',
              'hard_swish', 'hard_mish', 'relu6', 'leaky_relu', 'elu', 'celu', 'selu', 'prelu', 'identity')


class AttentionResult(NamedTuple):
    """Intermediates of one attention pass.

    Attributes:
        channel_weights: S, B x C, sums to one over channels (uniform 1/C when channel attention is off).
        spatial_weights: T, B x H x W (all ones when spatial attention is off).
        output: D, B x C x H x W, what the classifier sees.
        channel_logits: pre-softmax logits of S divided by the temperature, B x C (None when channel attention is off).
        spatial_logits: u, the channel sum of S * A, B x H x W (None when spatial attention is off).
        sum_fallback: B bool, samples where `spatial_norm='sum'` fell back to softmax (None for other norms).
    """
    channel_weights: torch.Tensor
    spatial_weights: torch.Tensor
    output: torch.Tensor
    channel_logits: Optional[torch.Tensor] = None
    spatial_logits: Optional[torch.Tensor] = None
    sum_fallback: Optional[torch.Tensor] = None


def check_features(x: torch.Tensor, channels: int, name: str = 'x') -> None:
    """Raise a clear error unless `x` is a non-empty B x C x H x W tensor with `channels` channels."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor of shape (B, {channels}, H, W), got {type(x).__name__}')
    if x.ndim != 4:
        raise ValueError(f'{name} must have 4 dims (B, {channels}, H, W), got shape {tuple(x.shape)}')
    if x.shape[1] != channels:
        raise ValueError(f'{name} must have {channels} channels (dim 1), got shape {tuple(x.shape)}')
    if x.shape[0] == 0:
        raise ValueError(f'{name} is an empty batch, shape {tuple(x.shape)}; expected B >= 1')
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f'{name} has an empty spatial map, shape {tuple(x.shape)}; expected H, W >= 1')
    if not x.is_floating_point():
        raise TypeError(f'{name} must be a floating point tensor, got {x.dtype}')


class ChannelSpatialAttention(nn.Module):
    """GGAM channel-spatial attention: an SE-style channel softmax S, then a spatial map T that rescales A.

    `forward(x)` returns D (same shape as x); `attend(x)` returns all intermediates as an `AttentionResult`.
    """

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1. / 16,
            rd_channels: Optional[int] = None,
            rd_divisor: int = 1,
            act_layer: Union[str, Type[nn.Module]] = 'relu',
            spatial_norm: str = 'softmax',
            parts: Optional[str] = None,
            temperature: float = 1.0,
            eps: float = 1e-6,
            device=None,
            dtype=None,
            *,
            channel_attn: Optional[bool] = None,
            spatial_attn: Optional[bool] = None,
            channel_rescale: Optional[bool] = None,
            spatial_gate: Optional[bool] = None,
    ):
        """
        Args:
            channels: Number of channels C of the feature maps A.
            rd_ratio: Reduction ratio of the hidden FC layer (the paper follows SE: 1/16).
            rd_channels: Hidden width; overrides `rd_ratio` when given.
            rd_divisor: Round the hidden width to a multiple of this.
            act_layer: Activation between the two FC layers (name or class).
            spatial_norm: How u is normalised into T: 'softmax' over positions (paper text), 'sum' (u / sum(u),
                eq. 3; samples whose sum is not above `eps` fall back to softmax) or 'sigmoid' (authors' code).
            parts: Which parts run (`ATTENTION_PARTS`; None: 'channel-spatial', the paper): 'channel-spatial'
                (S, then T; the classifier sees D = A * T), 'channel' (eq. 1 only: D = S * A), 'spatial' (S is the
                uniform 1/C and has no parameters; T from the channel mean of A), 'none' (D = A), and two variants
                of ours: 'channel-rescaled' (D = C * S * A, an SE-like gain: a uniform S passes A through unchanged,
                where eq. 1 divides it by C) and 'channel-spatial-gated' / 'spatial-gated' (T blended in through a
                learned scalar gate g that starts at 0: D = A * (1 - g + g * N T) for the softmax and sum norms, whose
                N T has mean 1, A * (1 - g + g T) for sigmoid; at g = 0 the head sees A unchanged, and it learns how
                much spatial attention to use, as residual gates and LayerScale do).
            temperature: Divides the logits of S before the softmax (1.0 is the paper).
            eps: Guard of the 'sum' denominator.
            channel_attn / spatial_attn / channel_rescale / spatial_gate: Deprecated spellings of `parts` (a
                DeprecationWarning; they go in the next release).
        """
        super().__init__()
        if channels < 1:
            raise ValueError(f'channels must be >= 1, got {channels}')
        if spatial_norm not in SPATIAL_NORMS:
            raise ValueError(f'spatial_norm must be one of {SPATIAL_NORMS}, got {spatial_norm!r}')
        if not temperature > 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        parts = resolve_parts(parts, channel_attn=channel_attn, spatial_attn=spatial_attn,
                              channel_rescale=channel_rescale, spatial_gate=spatial_gate)
        channel_attn, spatial_attn, channel_rescale, spatial_gate = ATTENTION_PARTS[parts]
        dd = {'device': device, 'dtype': dtype}
        self.channels = channels
        self.parts = parts
        self.spatial_norm = spatial_norm
        self.channel_attn = channel_attn
        self.spatial_attn = spatial_attn
        self.temperature = temperature
        self.eps = eps
        self.channel_rescale = channel_rescale
        self.spatial_gate = spatial_gate
        # g of `spatial_gate`, 0 at the start: the head begins as GAP of A and learns how much T to use
        self.gate = nn.Parameter(torch.zeros((), **dd)) if spatial_gate else None
        if channel_attn:
            if not rd_channels:
                rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
            self.rd_channels = rd_channels
            self.fc1 = nn.Linear(channels, rd_channels, **dd)
            self.act = create_act_layer(act_layer)
            self.fc2 = nn.Linear(rd_channels, channels, **dd)
        else:
            self.rd_channels = 0
            self.fc1 = self.act = self.fc2 = None

    def channel_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of S (already divided by the temperature), B x C."""
        z = self.fc2(self.act(self.fc1(x.mean((2, 3)))))
        return z / self.temperature if self.temperature != 1.0 else z

    def attend(self, x: torch.Tensor) -> AttentionResult:
        """Run eq. 1 to 3 and return S, T, D and the pre-normalisation logits."""
        if not torch.jit.is_scripting():
            if is_eager():  # no checks on FX proxies or while tracing; timm-style shape asserts would not help there
                check_features(x, self.channels)
        z: Optional[torch.Tensor] = None
        if self.channel_attn:
            z = self.channel_logits(x)
            s = z.softmax(dim=1)
        else:
            s = torch.full_like(x[:, :, 0, 0], 1.0 / self.channels)  # uniform 1/C; no x.shape unpacking (FX)
        if not self.spatial_attn:
            t = torch.ones_like(x[:, 0])
            if not self.channel_attn:
                return AttentionResult(s, t, x, z)
            gain = s * self.channels if self.channel_rescale else s
            return AttentionResult(s, t, x * gain[:, :, None, None], z)

        u = torch.einsum('bc,bchw->bhw', s, x)
        fallback: Optional[torch.Tensor] = None
        if self.spatial_norm == 'softmax':
            t = u.flatten(1).softmax(dim=1).view_as(u)
        elif self.spatial_norm == 'sigmoid':
            t = u.sigmoid()
        else:
            total = u.sum((1, 2), keepdim=True)
            fallback = total.flatten() <= self.eps
            safe_total = torch.where(total > self.eps, total, torch.ones_like(total))
            t = torch.where(fallback[:, None, None], u.flatten(1).softmax(dim=1).view_as(u), u / safe_total)
        if self.gate is None:
            return AttentionResult(s, t, x * t[:, None], z, u, fallback)
        return AttentionResult(s, t, x * self.gate_map(t)[:, None], z, u, fallback)

    def gate_scale(self, t: torch.Tensor) -> int:
        """N (the number of positions) for the softmax and sum norms, whose T sums to one; 1 for sigmoid."""
        return 1 if self.spatial_norm == 'sigmoid' else t.shape[-2] * t.shape[-1]

    def gate_map(self, t: torch.Tensor) -> torch.Tensor:
        """The multiplier of A under `spatial_gate`: 1 - g + g * scale * T, B x H x W."""
        g = self.gate.to(t.dtype)
        return 1 - g + g * (self.gate_scale(t) * t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x).output

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, rd_channels={self.rd_channels}, parts={self.parts!r}, '
                f'spatial_norm={self.spatial_norm!r}, temperature={self.temperature}')
