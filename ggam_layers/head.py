"""The GGAM head: channel-spatial attention, pooling, linear classifier, and Grad-CAM weights in closed form.

For a linear classifier W on pooled attended maps, y_k = W[k] . pool(D) + b_k, so d y_k / d A (eq. 4) has a closed
form and the GGAM loss needs one forward and one backward pass, with no hooks and no second autograd pass. With
A as B x C x N, w = W[k], kappa = 1/N for average pooling (1 for sum pooling), r = d y_k / d u and h the gradient
that flows back through the channel-attention MLP:

    g_n = kappa sum_c w_c A_{c,n}                     d y_k / d T_n
    r_n = T_n (g_n - sum_m T_m g_m)                   softmax norm (sum norm: (g_n - gbar) / sum u; sigmoid:
                                                      g_n T_n (1 - T_n))
    dS_c = sum_n r_n A_{c,n}
    dz = S (dS - <S, dS>) / tau                       back through the channel softmax
    h = ((dz @ W2) * [z1 > 0]) @ W1                   back through fc2, ReLU, fc1 (the GAP contributes 1/N)
    beta_c = kappa w_c sum_n T_n / N + S_c sum_n r_n / N + h_c / N

(sum_n r_n = 0 for the softmax norm). With `spatial_gate`, D = (1 - g) A + g c A T (c = N, or 1 for sigmoid) is
linear in the two terms: beta is the formula above with kappa replaced by g c kappa, plus (1 - g) kappa w_c.
Without the spatial map, D = S A and beta_c = kappa w_c S_c + h_c / N with
dS_c = kappa w_c sum_n A_{c,n}. Heads the closed form does not cover (an activation other than ReLU, dropout in
train mode, a non-linear classifier) fall back to `grad_cam_weights`; both give the same numbers.

On CUDA with Triton installed, `fused='auto'` runs the attention, pooling and beta as fused Triton kernels
(`ggam_layers.kernels`: 5 reads of A forward, 2 reads and 1 write backward, no float32 copy of A); options it does
not cover (`ggam_layers.kernels.FALLBACK`) take the PyTorch path below.
"""
import logging
from typing import Dict, NamedTuple, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._trace import is_eager
from .attention import AttentionResult, ChannelSpatialAttention, check_features, resolve_parts
from .closed_form import add_mlp_grad, position_grad, spatial_beta
from .gradcam import grad_cam_weights, select_classes
from .kernels.dispatch import fused_unsupported, load_ops

__all__ = ['GGAMHead', 'GGAMOutput', 'POOL_TYPES', 'CAM_LAYERS', 'closed_form_cam_weights', 'fused_self_test']

_logger = logging.getLogger(__name__)
# device -> None (the fused kernels passed their self-test there) or why they are off on it for this process
_FUSED_STATUS: Dict[str, Optional[str]] = {}

POOL_TYPES = ('auto', 'avg', 'sum')
CAM_LAYERS = ('features', 'attended')


class GGAMOutput(NamedTuple):
    """What `forward_ggam` returns; `GGAMLoss` takes it with the targets.

    Attributes:
        logits: Class scores y, B x num_classes.
        channel_weights: S, B x C, attached to the graph (the GGAM loss trains the attention through it).
        cam_weights: Grad-CAM weights beta of the explained class, B x C, detached, before squashing.
        spatial_weights: T, B x H x W, attached.
        classes: The class explained by `cam_weights` per sample, B.
        features: A, the B x C x H x W features the head explained, as given (attached: detach it to build a target
            from it, such as the Grad-CAM map relu(sum_c beta_c A_c)).
    """
    logits: torch.Tensor
    channel_weights: torch.Tensor
    cam_weights: torch.Tensor
    spatial_weights: torch.Tensor
    classes: torch.Tensor
    features: Optional[torch.Tensor] = None


def closed_form_cam_weights(
        features: torch.Tensor,
        attn: ChannelSpatialAttention,
        result: AttentionResult,
        class_weights: torch.Tensor,
        avg_pool: bool,
        cam_layer: str = 'features',
) -> torch.Tensor:
    """Grad-CAM weights beta (eq. 4) of the GGAM head in closed form, detached (module docstring).

    Args:
        features: A, B x C x H x W.
        attn: The attention module (ReLU between its FC layers when channel attention is on).
        result: `attn.attend(features)`.
        class_weights: w = W[k], the classifier row of the explained class for each sample, B x C.
        avg_pool: True if the head averages D over positions (kappa = 1/N), False if it sums (kappa = 1).
        cam_layer: 'features' (gradient at A, paper) or 'attended' (gradient at D, authors' code).
    """
    gated = attn.spatial_attn and attn.gate is not None
    with torch.no_grad():
        # = torch.promote_types(features.dtype, torch.float32), which torch.compile of torch 2.1 cannot trace
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        a = features.detach().flatten(2).to(dtype)
        n = a.shape[2]
        kappa = 1.0 / n if avg_pool else 1.0
        w = class_weights.detach().to(dtype)
        if cam_layer == 'attended':
            return kappa * w
        s = result.channel_weights.detach().to(dtype)
        if attn.spatial_attn:
            t = result.spatial_weights.detach().flatten(1).to(dtype)
            kappa_plain = kappa
            if gated:  # D = (1 - g) A + g c A T: the attended term at scale g c kappa, the plain term added below
                gate = attn.gate.detach().to(dtype)
                kappa = kappa * gate * attn.gate_scale(result.spatial_weights)
            g = kappa * torch.einsum('bc,bcn->bn', w, a)
            total = fallback = None
            if attn.spatial_norm == 'sum':
                fallback = result.sum_fallback[:, None]
                total = result.spatial_logits.detach().flatten(1).to(dtype).sum(1, keepdim=True)
                total = torch.where(fallback, torch.ones_like(total), total)
            r = position_grad(g, t, attn.spatial_norm, total, fallback)
            beta = spatial_beta(w, s, t, r, kappa, n)
            if gated:
                beta = beta + (1 - gate) * kappa_plain * w
            grad_s = torch.einsum('bn,bcn->bc', r, a)
        else:
            k = kappa * a.shape[1] if attn.channel_attn and attn.channel_rescale else kappa  # D = C * S * A
            beta = k * w * s if attn.channel_attn else kappa * w
            grad_s = k * w * a.sum(2)
        if attn.channel_attn:
            w1, b1 = attn.fc1.weight.detach().to(dtype), attn.fc1.bias.detach().to(dtype)
            z1 = F.linear(a.mean(2), w1, b1)
            beta = add_mlp_grad(beta, s, grad_s, z1, w1, attn.fc2.weight.detach().to(dtype), attn.temperature, n)
    return beta


class GGAMHead(nn.Module):
    """Channel-spatial attention, pooling and a linear classifier on B x C x H x W features.

    `forward(x)` gives the logits; `forward_ggam(x)` gives logits, S, T and beta in one pass for `GGAMLoss`.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
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
            fused: Union[bool, str] = 'auto',
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
            in_features: Channels C of the feature maps.
            num_classes: Classes K (0 for no classifier: `forward` then returns the pooled features).
            rd_ratio: See `ChannelSpatialAttention`.
            rd_channels: See `ChannelSpatialAttention`.
            rd_divisor: See `ChannelSpatialAttention`.
            act_layer: See `ChannelSpatialAttention`; the closed form needs ReLU (others use autograd).
            spatial_norm: See `ChannelSpatialAttention`.
            parts: Which parts of the attention run (`ChannelSpatialAttention`, `ATTENTION_PARTS`).
            temperature: See `ChannelSpatialAttention`.
            pool_type: 'avg' (global average of D, the paper's pipeline), 'sum' (sum of D over positions: with a
                normalised T this is attention pooling, the T-weighted mean of A, on the scale of a plain global
                average pool) or 'auto' ('sum' for the softmax and sum norms, 'avg' otherwise; 'avg' for the gated
                parts, whose N T already has mean 1, so that g = 0 is the plain global average pool).
            drop_rate: Dropout before the classifier.
            cam_layer: Take the Grad-CAM gradient at 'features' A (paper) or 'attended' D (authors' code).
            closed_form: Use the closed form of beta where it applies; False always uses autograd.
            fused: 'auto' runs the fused Triton kernels (`ggam_layers.kernels`) for CUDA features when Triton is
                installed and the options are covered, else the PyTorch path; True always runs them (an error when
                they cannot run: on the CPU they need TRITON_INTERPRET=1); False never.
            channel_attn / spatial_attn / channel_rescale / spatial_gate: Deprecated spellings of `parts` (a
                DeprecationWarning; they go in the next release).
        """
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f'pool_type must be one of {POOL_TYPES}, got {pool_type!r}')
        if cam_layer not in CAM_LAYERS:
            raise ValueError(f'cam_layer must be one of {CAM_LAYERS}, got {cam_layer!r}')
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}')
        if fused not in (True, False, 'auto'):
            raise ValueError(f"fused must be True, False or 'auto', got {fused!r}")
        dd = {'device': device, 'dtype': dtype}
        self.in_features = in_features
        self.num_classes = num_classes
        self.cam_layer = cam_layer
        self.closed_form = closed_form
        self.fused = fused
        self.attn = ChannelSpatialAttention(
            in_features, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor, act_layer=act_layer,
            spatial_norm=spatial_norm, temperature=temperature, **dd,
            parts=resolve_parts(parts, channel_attn=channel_attn, spatial_attn=spatial_attn,
                                channel_rescale=channel_rescale, spatial_gate=spatial_gate))
        self.pool_type = self.auto_pool_type() if pool_type == 'auto' else pool_type
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def auto_pool_type(self) -> str:
        """What `pool_type='auto'` means for this head's attention: 'sum' for a softmax or sum normalised T (attention
        pooling on the scale of a global average), 'avg' otherwise (no T, a sigmoid T, or a gated T, whose N T
        already has mean 1, so that g = 0 is the plain global average pool)."""
        attn = self.attn
        return 'sum' if attn.spatial_attn and attn.spatial_norm in ('softmax', 'sum') and not attn.spatial_gate \
            else 'avg'

    def reset_classifier(self, num_classes: int, device=None, dtype=None) -> None:
        """Replace the classifier with a fresh one for `num_classes` classes (0 for none).

        Args:
            num_classes: Classes of the new classifier.
            device / dtype: Of the new classifier; None takes those of the head's parameters (float32 on the CPU
                when the head has none).
        """
        ref = next(self.parameters(), None)
        device = device if device is not None else (ref.device if ref is not None else None)
        dtype = dtype if dtype is not None else (ref.dtype if ref is not None else None)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes > 0 \
            else nn.Identity()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool attended maps D (B x C x H x W) to B x C."""
        return x.sum((2, 3)) if self.pool_type == 'sum' else x.mean((2, 3))

    def _classify(self, d: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(d))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not torch.jit.is_scripting():  # fused kernels run eagerly (and compiled), not in FX or TorchScript graphs
            if is_eager() and self._use_fused(x, ggam=False):
                pooled = self._fused_attend(x)[0]
                x = self.drop(pooled.to(self._fused_dtype(x)))
                return x if pre_logits else self.fc(x)
        return self._classify(self.attn(x), pre_logits)

    def fused_unsupported(self, x: torch.Tensor, ggam: bool = True) -> Optional[str]:
        """Why the fused kernels cannot run this head on `x` (None when they can), whatever `fused` says.

        Args:
            x: Features, B x C x H x W.
            ggam: For `forward_ggam` (True) or `forward` (False).
        """
        reason = fused_unsupported(self, x, ggam)
        if reason is None:
            key = str(x.device)
            reason = fused_self_test(x.device) if key not in _FUSED_STATUS and is_eager() else _FUSED_STATUS.get(key)
        return reason

    def uses_fused(self, x: torch.Tensor, ggam: bool = True) -> bool:
        """Whether `forward_ggam` (or `forward`, with `ggam=False`) runs the fused kernels on `x`.

        Raises ValueError with the reason when `fused=True` and the kernels cannot run.
        """
        if self.fused is False:
            return False
        reason = self.fused_unsupported(x, ggam)
        if self.fused == 'auto':
            return reason is None and x.device.type == 'cuda'
        if reason is not None:
            raise ValueError(f'fused=True, but the fused GGAM kernels cannot run: {reason}')
        return True

    def _use_fused(self, x: torch.Tensor, ggam: bool) -> bool:
        if self.fused is False:
            return False
        check_features(x, self.in_features)
        return self.uses_fused(x, ggam)

    @staticmethod
    def _fused_dtype(x: torch.Tensor) -> torch.dtype:
        """The dtype the PyTorch path gives pooled D, S and T: float32 under autocast, else that of x."""
        return torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype

    def _kappa(self, x: torch.Tensor) -> float:
        return 1.0 / (x.shape[2] * x.shape[3]) if self.pool_type == 'avg' else 1.0

    def _fused_attend(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        attn = self.attn
        on = attn.channel_attn
        return load_ops().attend(
            x, attn.fc1.weight if on else None, attn.fc1.bias if on else None, attn.fc2.weight if on else None,
            attn.fc2.bias if on else None, float(attn.temperature), attn.spatial_norm, attn.spatial_attn,
            self._kappa(x), float(attn.eps), self._gain(x))

    def _gain(self, x: torch.Tensor) -> float:
        """C with `channel_rescale` (D = C S A, channel-only head), else 1."""
        attn = self.attn
        on = attn.channel_attn and not attn.spatial_attn and attn.channel_rescale
        return float(x.shape[1]) if on else 1.0

    def closed_form_unsupported(self) -> Optional[str]:
        """Why `forward_ggam` cannot compute beta in closed form now (None when it can): the one list of what the
        closed form covers, which the fused kernels' dispatch reads too."""
        if not self.closed_form:
            return 'closed_form=False'
        if not isinstance(self.fc, nn.Linear):
            return f'classifier {type(self.fc).__name__} is not nn.Linear'
        if self.drop.p > 0 and self.training:
            return 'dropout in train mode'
        if self.attn.channel_attn and not isinstance(self.attn.act, nn.ReLU):
            return f'act_layer {type(self.attn.act).__name__} is not ReLU'
        return None

    def uses_closed_form(self) -> bool:
        """Whether `forward_ggam` computes beta in closed form (else by autograd on the head only)."""
        return self.closed_form_unsupported() is None

    def forward_ggam(self, x: torch.Tensor, classes: Optional[torch.Tensor] = None) -> GGAMOutput:
        """Logits, S, T and Grad-CAM beta in one pass.

        Args:
            x: Features A, B x C x H x W.
            classes: Class per sample to explain; the predicted class (argmax of the logits) when None (paper).
        """
        if self.num_classes == 0:
            raise ValueError('forward_ggam needs a classifier; this head has num_classes=0 (call reset_classifier)')
        check_features(x, self.in_features)
        if self._use_fused(x, ggam=True):
            return self._fused_forward_ggam(x, classes)
        if self.uses_closed_form():
            res = self.attn.attend(x)
            logits = self._classify(res.output)
            classes = select_classes(logits, classes)
            beta = closed_form_cam_weights(
                x, self.attn, res, self.fc.weight[classes], self.pool_type == 'avg', self.cam_layer)
            return GGAMOutput(logits, res.channel_weights, beta.to(x.dtype), res.spatial_weights, classes, x)

        if self.cam_layer == 'attended':
            res = self.attn.attend(x)
            cam = grad_cam_weights(res.output, self._classify, classes)
        else:
            results = []

            def head(a: torch.Tensor) -> torch.Tensor:
                results.append(self.attn.attend(a))
                return self._classify(results[-1].output)

            cam = grad_cam_weights(x, head, classes)
            res = results[-1]
        return GGAMOutput(cam.scores, res.channel_weights, cam.weights, res.spatial_weights, cam.classes, x)

    def _fused_forward_ggam(self, x: torch.Tensor, classes: Optional[torch.Tensor]) -> GGAMOutput:
        b, _, h, w = x.shape
        attn = self.attn
        pooled, s, t, m, u, z1 = self._fused_attend(x)
        dtype = self._fused_dtype(x)
        logits = self.fc(self.drop(pooled.to(dtype)))
        classes = select_classes(logits, classes)
        beta = load_ops().fused_cam_weights(
            x, self.fc.weight[classes], s, t, m, u, z1, attn.fc1.weight if attn.channel_attn else None,
            attn.fc2.weight if attn.channel_attn else None, float(attn.temperature), attn.spatial_norm,
            attn.spatial_attn, self._kappa(x), float(attn.eps), self.cam_layer, self._gain(x))
        return GGAMOutput(logits, s.to(dtype), beta.to(x.dtype), t.view(b, h, w).to(dtype), classes, x)


def fused_self_test(device: Union[str, torch.device]) -> Optional[str]:
    """Check once per device and process that the fused kernels run there and agree with the PyTorch path.

    What is knowable comes first (CUDA compute capability, Triton importable), then a small head (C=32, 5 classes,
    a 4 x 4 map, float32) runs `forward_ggam` and a backward both ways. Any compile, launch or numeric failure turns
    the fused path off on that device for the rest of the process, with one warning naming the cause: `fused='auto'`
    then takes the PyTorch path, `fused=True` raises with the cause. Under torch.compile the test is not run (the
    training command runs it before compiling); an untested device is taken as it is.

    Returns:
        None when the kernels passed, else the reason they are off.
    """
    device = torch.device(device)
    key = str(device)
    if key not in _FUSED_STATUS:
        reason = _run_self_test(device)
        _FUSED_STATUS[key] = reason
        if reason is not None:
            _logger.warning('the fused GGAM kernels are off on %s for this process (%s); the PyTorch path runs '
                            'instead, with the same results', key, reason)
    return _FUSED_STATUS[key]


def _run_self_test(device: torch.device) -> Optional[str]:
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (7, 0):
            return f'compute capability {major}.{minor}: the Triton kernels need 7.0 or newer'
    try:
        load_ops()
    except Exception as e:  # an incompatible Triton fails here with any exception type
        return f'Triton failed to load ({type(e).__name__}: {_first_line(e)})'
    try:
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), torch.inference_mode(False), \
                torch.enable_grad(), torch.autocast(device.type, enabled=False):
            torch.manual_seed(0)
            head = GGAMHead(32, 5, rd_channels=4, fused=False).to(device)
            x = torch.randn(2, 32, 4, 4, device=device)
            outs, grads = [], []
            for fused in (False, True):
                xi = x.clone().requires_grad_(True)
                out = head._fused_forward_ggam(xi, None) if fused else head.forward_ggam(xi)
                (out.logits.square().sum() + out.channel_weights.sum() + out.spatial_weights.square().sum()).backward()
                outs.append(out)
                grads.append(xi.grad)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
    except Exception as e:
        return f'the self-test failed with {type(e).__name__}: {_first_line(e)}'
    (ref, got), (g_ref, g_got) = outs, grads
    for name, a, b in (('logits', ref.logits, got.logits), ('S', ref.channel_weights, got.channel_weights),
                       ('T', ref.spatial_weights, got.spatial_weights), ('beta', ref.cam_weights, got.cam_weights),
                       ('the gradient of A', g_ref, g_got)):
        b = b.detach().float()
        a = a.detach().float()
        if a.shape != b.shape or not torch.isfinite(b).all() or not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
            diff = (a - b).abs().max().item() if a.shape == b.shape else float('nan')
            return f'the kernels disagree with the PyTorch path on {name} (largest difference {diff:.3g})'
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [''])[0][:200]
