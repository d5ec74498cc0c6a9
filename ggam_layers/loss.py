"""GGAM loss (eq. 5 and 6 of the paper).

    beta~ = normalise(squash(transform(beta)))                 the Grad-CAM target, a distribution over C channels
    L_GGAM = 1/2 (KL(S || beta~) + KL(beta~ || S))            eq. 5 (kl='symmetric')
    Loss = CE(y, target) + lambda * L_GGAM                    eq. 6

How beta~ is made and compared with S is one concept, the target (`CamTarget`): `GGAMLoss(target='paper')` (eq. 5
as written), 'authors' (the authors' code), 'standardized' (beta standardised per sample first; `GGAMLoss`'s default,
`DEFAULT_CAM_TARGET`, chosen on fine-tuned ImageNet features: docs/method.md), 'uniform' (the control without
Grad-CAM: KL towards 1/C), a `CamTarget` for other combinations, or a callable giving log beta~. The functions
(`ggam_loss`, `ggam_divergence`, `cam_log_target`) take the target's parts, which default to eq. 5 as written.

beta is detached: the gradient of L_GGAM reaches the network through S only. Everything is computed in log space in
float32 (float16 and bfloat16 inputs from autocast are upcast; float64 stays float64), so the value is finite for any
finite input.
"""
import math
import warnings
from typing import Any, Callable, Dict, NamedTuple, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['CAM_TARGETS', 'DEFAULT_CAM_TARGET', 'CamTarget', 'GGAMLoss', 'GGAMLossTerms', 'cam_log_target',
           'classification_loss', 'ggam_divergence', 'ggam_loss', 'resolve_cam_target', 'target_from_parts',
           'target_log_probs', 'SQUASHES', 'KL_MODES', 'TARGET_NORMS']

SQUASHES = ('sigmoid', 'softmax')
KL_MODES = ('symmetric', 'forward', 'reverse')
TARGET_NORMS = ('none', 'standardize')
REDUCTIONS = ('mean', 'sum', 'none')


class CamTarget(NamedTuple):
    """The Grad-CAM target: how beta becomes the distribution beta~ that S is pulled towards, and which KL.

    Attributes:
        squash: 'sigmoid' (paper: sigmoid(beta), normalised) or 'softmax' (authors' code).
        kl: 'symmetric' (paper, eq. 5), 'forward' KL(S || beta~) (authors' code) or 'reverse' KL(beta~ || S).
        norm: 'none' (paper) or 'standardize' (beta standardised per sample before squashing: scale free).
        temperature: Divides beta after `norm`, before squashing (1.0: paper).
        uniform: The control without Grad-CAM: beta~ is exactly 1/C whatever beta is (squash, norm and temperature
            are then unused).
        fn: A callable beta (B x C, detached, float32 or float64) -> log beta~ (B x C, each row a log distribution);
            replaces squash, norm and temperature.
    """
    squash: str = 'sigmoid'
    kl: str = 'symmetric'
    norm: str = 'none'
    temperature: float = 1.0
    uniform: bool = False
    fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


# the named targets of `GGAMLoss(target=...)` (docs/method.md: which source each follows)
CAM_TARGETS: Dict[str, CamTarget] = {
    'paper': CamTarget(),
    'authors': CamTarget(squash='softmax', kl='forward'),
    'standardized': CamTarget(norm='standardize'),
    'uniform': CamTarget(uniform=True),
}
# `GGAMLoss`'s target when none is named: ahead of the paper's target and of the uniform control beyond the seed
# spread on fine-tuned ImageNet features (benchmarks/README.md, "ImageNet features, converged"); docs/method.md
DEFAULT_CAM_TARGET = 'standardized'
_LEGACY = ('squash', 'kl', 'target_norm', 'temperature')


def target_from_parts(squash: Optional[str] = None, kl: Optional[str] = None, norm: Optional[str] = None,
                      temperature: Optional[float] = None) -> CamTarget:
    """The paper's target with the parts given (None: the paper's part)."""
    given = {'squash': squash, 'kl': kl, 'norm': norm, 'temperature': temperature}
    return CAM_TARGETS['paper']._replace(**{k: v for k, v in given.items() if v is not None})


def resolve_cam_target(target: Optional[Union[str, CamTarget, Callable]] = None, **legacy: Any) -> CamTarget:
    """A `CamTarget` from a name of `CAM_TARGETS`, a `CamTarget` or a callable (log beta~ with the symmetric KL);
    None is `DEFAULT_CAM_TARGET`.

    `legacy` takes the spellings before `target` (squash, kl, target_norm, temperature; None: not given): they
    build the target on top of 'paper', with a DeprecationWarning (they go in the next release).
    """
    given = {k: v for k, v in legacy.items() if v is not None}
    unknown = set(given) - set(_LEGACY)
    if unknown:
        raise TypeError(f'unknown target arguments {sorted(unknown)}; the target options are {_LEGACY}')
    if given:
        if not (target is None or (isinstance(target, str) and target == 'paper')):
            raise ValueError(f'target={target!r} and {", ".join(f"{k}={v!r}" for k, v in given.items())} both say '
                             'what the Grad-CAM target is: pass target alone')
        warnings.warn(f'{", ".join(sorted(given))} are deprecated: pass target= (a name of {tuple(CAM_TARGETS)} or '
                      'a CamTarget(squash, kl, norm, temperature))', DeprecationWarning, stacklevel=3)
        target = target_from_parts(given.get('squash'), given.get('kl'), given.get('target_norm'),
                                   given.get('temperature'))
    if target is None:
        target = DEFAULT_CAM_TARGET
    if isinstance(target, str):
        if target not in CAM_TARGETS:
            raise ValueError(f'target must be one of {tuple(CAM_TARGETS)}, a CamTarget or a callable, got {target!r}')
        return CAM_TARGETS[target]
    if isinstance(target, CamTarget):
        _check_choice('squash', target.squash, SQUASHES)
        _check_choice('kl', target.kl, KL_MODES)
        _check_choice('norm', target.norm, TARGET_NORMS)
        if not target.temperature > 0:
            raise ValueError(f'temperature must be > 0, got {target.temperature}')
        return target
    if callable(target):
        return CamTarget(fn=target)
    raise TypeError(f'target must be a name of {tuple(CAM_TARGETS)}, a CamTarget or a callable, got '
                    f'{type(target).__name__}')


def target_log_probs(cam_weights: torch.Tensor, target: CamTarget) -> torch.Tensor:
    """log beta~ of `target` for beta = `cam_weights` (B x C), detached, in float32 or float64."""
    if target.uniform:
        beta = _upcast(cam_weights.detach())
        return torch.full_like(beta, -math.log(beta.shape[1]))
    if target.fn is not None:
        beta = _upcast(cam_weights.detach())
        log_q = target.fn(beta)
        if not isinstance(log_q, torch.Tensor) or log_q.shape != beta.shape:
            raise ValueError(f'the target callable must return log beta~ of shape {tuple(beta.shape)}, got '
                             f'{getattr(log_q, "shape", type(log_q).__name__)}')
        return log_q.detach().to(beta.dtype)
    return cam_log_target(cam_weights, target.squash, target.norm, target.temperature)


class GGAMLossTerms(NamedTuple):
    """The loss and its two parts, each reduced the same way.

    Attributes:
        loss: CE + lambda * L_GGAM, the value to backpropagate.
        ce: The cross-entropy term.
        ggam: L_GGAM, before the lambda weight.
    """
    loss: torch.Tensor
    ce: torch.Tensor
    ggam: torch.Tensor


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')


def _check_weights(name: str, x: Any, batch: Optional[int] = None, channels: Optional[int] = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor of shape (B, C), got {type(x).__name__}')
    if x.ndim != 2:
        raise ValueError(f'{name} must have shape (B, C), got {tuple(x.shape)}')
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f'{name} must be non-empty (B >= 1, C >= 1), got shape {tuple(x.shape)}')
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f'{name} has batch size {x.shape[0]}, expected {batch} (the batch size of the logits)')
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f'{name} has {x.shape[1]} channels, expected {channels} (as channel_weights)')


def cam_log_target(
        cam_weights: torch.Tensor,
        squash: str = 'sigmoid',
        target_norm: str = 'none',
        temperature: float = 1.0,
        eps: float = 1e-6,
) -> torch.Tensor:
    """log beta~, the log of the Grad-CAM target distribution, detached, in float32 or float64.

    Args:
        cam_weights: beta, B x C.
        squash: 'sigmoid' (paper: sigmoid(beta), then divided by its sum so it is a distribution) or 'softmax'
            (authors' code).
        target_norm: 'none' (the default, the paper as written: the raw beta, whose sigmoid is almost uniform, so
            the loss acts like a KL towards the uniform distribution and keeps S from collapsing) or 'standardize'
            (per sample, subtract the mean over channels and divide by the standard deviation: scale free, S then
            follows Grad-CAM). At a 7 x 7 map (benchmarks/results/ablation_map7.md, 3 seeds) 'none' reached 79.7 ±
            0.3% and 'standardize' 72.3 ± 6.8% (lower on 3 of 3 seeds), the uniform-KL control 78.7 ± 1.7%.
        temperature: beta is divided by it after `target_norm` (1.0 is the paper).
        eps: Added to the standard deviation by 'standardize'.
    """
    _check_choice('squash', squash, SQUASHES)
    _check_choice('target_norm', target_norm, TARGET_NORMS)
    if not temperature > 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')
    beta = _upcast(cam_weights.detach())
    if target_norm == 'standardize':
        beta = (beta - beta.mean(1, keepdim=True)) / (beta.std(1, keepdim=True, correction=0) + eps)
    if temperature != 1.0:
        beta = beta / temperature
    if squash == 'softmax':
        return beta.log_softmax(dim=1)
    log_sig = F.logsigmoid(beta)
    return log_sig - log_sig.logsumexp(dim=1, keepdim=True)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32: half and bfloat16 (autocast) go to float32, float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                        reduction: str = 'mean') -> torch.Tensor:
    """The cross-entropy term of every package loss, in at least float32 (class indices or soft targets)."""
    y = _upcast(target) if target.is_floating_point() else target
    return F.cross_entropy(_upcast(logits), y, label_smoothing=label_smoothing, reduction=reduction)


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == 'mean':
        return x.mean()
    if reduction == 'sum':
        return x.sum()
    return x


def ggam_divergence(
        channel_weights: torch.Tensor,
        cam_weights: torch.Tensor,
        squash: str = 'sigmoid',
        kl: str = 'symmetric',
        target_norm: str = 'none',
        temperature: float = 1.0,
        reduction: str = 'mean',
        target: Optional[Union[str, CamTarget, Callable]] = None,
) -> torch.Tensor:
    """L_GGAM (eq. 5): the KL divergence between S and the Grad-CAM target beta~, per sample reduced over the batch.

    Args:
        channel_weights: S, B x C, each row a distribution (softmax output).
        cam_weights: beta, B x C (detached here).
        squash: See `cam_log_target`.
        kl: 'symmetric' (paper, eq. 5), 'forward' KL(S || beta~) (authors' code) or 'reverse' KL(beta~ || S).
        target_norm: See `cam_log_target`.
        temperature: See `cam_log_target`.
        reduction: 'mean' or 'sum' over the batch, or 'none' for a B vector.
        target: The whole target at once (`GGAMLoss`'s `target`: a name of `CAM_TARGETS`, a `CamTarget` or a
            callable); replaces squash, kl, target_norm and temperature when given.
    """
    cam = resolve_cam_target(target) if target is not None else resolve_cam_target(
        CamTarget(squash=squash, kl=kl, norm=target_norm, temperature=temperature))
    kl = cam.kl
    _check_choice('reduction', reduction, REDUCTIONS)
    _check_weights('channel_weights', channel_weights)
    _check_weights('cam_weights', cam_weights, channel_weights.shape[0], channel_weights.shape[1])
    log_q = target_log_probs(cam_weights, cam)
    s = _upcast(channel_weights)
    s = s / s.sum(1, keepdim=True)  # a no-op for a softmax output; keeps KL >= 0 when S was rounded (bf16, fp16)
    log_q = log_q.to(s.dtype)
    log_s = s.clamp_min(torch.finfo(s.dtype).tiny).log()
    terms = []
    if kl in ('symmetric', 'forward'):
        terms.append((s * (log_s - log_q)).sum(1))
    if kl in ('symmetric', 'reverse'):
        terms.append((log_q.exp() * (log_q - log_s)).sum(1))
    div = 0.5 * (terms[0] + terms[1]) if kl == 'symmetric' else terms[0]
    return _reduce(div, reduction)


def ggam_loss(
        logits: torch.Tensor,
        target: torch.Tensor,
        channel_weights: torch.Tensor,
        cam_weights: torch.Tensor,
        lam: float = 1.0,
        squash: str = 'sigmoid',
        kl: str = 'symmetric',
        target_norm: str = 'none',
        temperature: float = 1.0,
        label_smoothing: float = 0.0,
        reduction: str = 'mean',
        check_finite: bool = False,
        cam_target: Optional[Union[str, CamTarget, Callable]] = None,
) -> GGAMLossTerms:
    """CE + lambda * L_GGAM (eq. 6), in at least float32, with both parts returned for logging.

    Args:
        logits: Class scores y, B x K.
        target: Class indices (B) or class probabilities (B x K).
        channel_weights: S, B x C.
        cam_weights: beta, B x C (detached here).
        lam: lambda, the weight of L_GGAM (>= 0).
        squash: See `cam_log_target`.
        kl: See `ggam_divergence`.
        target_norm: See `cam_log_target`.
        temperature: See `cam_log_target`.
        label_smoothing: Passed to `F.cross_entropy`.
        reduction: 'mean' or 'sum' over the batch, or 'none' for B vectors.
        check_finite: Raise if logits, S or beta hold inf or NaN. Off by default: the check synchronises the host.
        cam_target: The Grad-CAM target at once (see `ggam_divergence`'s `target`; `target` here is the labels).
    """
    if not lam >= 0:
        raise ValueError(f'lam must be >= 0, got {lam}')
    _check_choice('reduction', reduction, REDUCTIONS)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(f'logits must be a (B, K) tensor, got {getattr(logits, "shape", type(logits).__name__)}')
    b = logits.shape[0]
    if b == 0:
        raise ValueError('logits is an empty batch; expected B >= 1')
    if not isinstance(target, torch.Tensor):
        raise TypeError(f'target must be a torch.Tensor of ({b},) class indices, got {type(target).__name__}')
    if target.shape[:1] != (b,) or target.ndim not in (1, 2) or (target.ndim == 2 and target.shape != logits.shape):
        raise ValueError(
            f'target must be ({b},) class indices or ({b}, {logits.shape[1]}) probabilities, got {tuple(target.shape)}')
    _check_weights('channel_weights', channel_weights, b)
    _check_weights('cam_weights', cam_weights, b, channel_weights.shape[1])
    if check_finite:
        for name, x in (('logits', logits), ('channel_weights', channel_weights), ('cam_weights', cam_weights)):
            if not torch.isfinite(x).all():
                raise ValueError(f'{name} holds non-finite values (inf or NaN)')
    ce = classification_loss(logits, target, label_smoothing, reduction)
    div = ggam_divergence(channel_weights, cam_weights, squash, kl, target_norm, temperature, reduction, cam_target)
    return GGAMLossTerms(ce + lam * div, ce, div)


class GGAMLoss(nn.Module):
    """Cross-entropy plus the Grad-CAM guided channel attention loss (eq. 6).

    `forward` returns the scalar loss (reduction 'mean' over the batch by default); `terms` returns it with its CE
    and L_GGAM parts for logging. Both take either the result of `forward_ggam` (anything with `logits`,
    `channel_weights` and `cam_weights`) or the three tensors.
    """

    def __init__(
            self,
            lam: float = 1.0,
            target: Optional[Union[str, CamTarget, Callable]] = None,
            label_smoothing: float = 0.0,
            reduction: str = 'mean',
            check_finite: bool = False,
            *,
            squash: Optional[str] = None,
            kl: Optional[str] = None,
            target_norm: Optional[str] = None,
            temperature: Optional[float] = None,
    ):
        """
        Args:
            lam: lambda, the weight of L_GGAM (the paper sweeps 1 to 9; 0 gives plain cross-entropy).
            target: The Grad-CAM target beta~ and its KL: 'paper' (sigmoid(beta) normalised, symmetric KL: eq. 5
                as written), 'authors' (softmax(beta), KL(S || beta~): the authors' code), 'standardized' (beta
                standardised per sample, then as 'paper'), 'uniform' (the control: KL towards 1/C, no Grad-CAM), a
                `CamTarget` for any other combination, or a callable beta -> log beta~ (with the symmetric KL).
                None: `DEFAULT_CAM_TARGET`, 'standardized' (docs/method.md: why; from scratch, 'paper' did better),
                or, with the deprecated parts below, those parts on top of 'paper'.
            label_smoothing: Of the cross-entropy.
            reduction: 'mean' or 'sum' over the batch, or 'none'.
            check_finite: Raise on non-finite inputs (synchronises the host).
            squash / kl / target_norm / temperature: Deprecated spellings of `target` (a DeprecationWarning; they
                go in the next release): `CamTarget(squash, kl, norm, temperature)`.
        """
        super().__init__()
        if not lam >= 0:
            raise ValueError(f'lam must be >= 0, got {lam}')
        _check_choice('reduction', reduction, REDUCTIONS)
        self.target = resolve_cam_target(target, squash=squash, kl=kl, target_norm=target_norm,
                                         temperature=temperature)
        self.lam = lam
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.check_finite = check_finite

    def terms(
            self,
            output: Any,
            target: torch.Tensor,
            channel_weights: Optional[torch.Tensor] = None,
            cam_weights: Optional[torch.Tensor] = None,
    ) -> GGAMLossTerms:
        """The loss with its CE and L_GGAM parts.

        Args:
            output: A `forward_ggam` result, or the logits (then pass `channel_weights` and `cam_weights`).
            target: Class indices (B) or probabilities (B x K).
            channel_weights: S, B x C, when `output` is the logits.
            cam_weights: beta, B x C, when `output` is the logits.
        """
        if isinstance(output, torch.Tensor):
            logits = output
            if channel_weights is None or cam_weights is None:
                raise TypeError('channel_weights and cam_weights are required when output is the logits tensor')
        else:
            if channel_weights is not None or cam_weights is not None:
                raise TypeError('pass channel_weights and cam_weights only with a logits tensor, not with a result')
            try:
                logits, channel_weights, cam_weights = output.logits, output.channel_weights, output.cam_weights
            except AttributeError:
                raise TypeError(
                    'output must be a logits tensor or a forward_ggam result with logits, channel_weights and '
                    f'cam_weights, got {type(output).__name__}') from None
        return ggam_loss(
            logits, target, channel_weights, cam_weights, lam=self.lam, label_smoothing=self.label_smoothing,
            reduction=self.reduction, check_finite=self.check_finite, cam_target=self.target)

    def forward(
            self,
            output: Any,
            target: torch.Tensor,
            channel_weights: Optional[torch.Tensor] = None,
            cam_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.terms(output, target, channel_weights, cam_weights).loss

    @property
    def squash(self) -> str:
        """The target's squash (read-only; see `target`)."""
        return self.target.squash

    @property
    def kl(self) -> str:
        """The target's KL (read-only; see `target`)."""
        return self.target.kl

    @property
    def target_norm(self) -> str:
        """The target's normalisation of beta (read-only; see `target`)."""
        return self.target.norm

    @property
    def temperature(self) -> float:
        """The target's temperature on beta (read-only; see `target`)."""
        return self.target.temperature

    def extra_repr(self) -> str:
        named = next((k for k, v in CAM_TARGETS.items() if v == self.target), None)
        target = repr(named) if named else repr(self.target)
        return f'lam={self.lam}, target={target}, reduction={self.reduction!r}'

