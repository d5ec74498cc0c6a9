"""The fused GGAM head as `torch.library` custom ops (Triton kernels inside, a hand-written backward).

Ops (namespace `ggam_layers`), each with a fake implementation so `torch.compile(fullgraph=True)` traces through:

- `attend(a, fc1_w, fc1_b, fc2_w, fc2_b, temperature, spatial_norm, spatial_attn, kappa, eps, gain)`: eq. 1-3 and
  the pooling in one op (gain: C for `channel_rescale`, D = C S A without the spatial map, else 1). Returns
  (pooled, S, T, GAP, u, z1), all float32; pooled = kappa sum_n T_n A_{:,n} (kappa = 1/N for average pooling, 1 for
  sum pooling) is what the classifier sees. The channel MLP (fc1, ReLU,
  fc2, softmax over channels) runs inside as ordinary float32 torch ops on B x C vectors; only A is touched by
  Triton. Differentiable in A, the MLP parameters, and through pooled, S and T (GAP, u, z1 are auxiliary).
- `channel_contract(a, v, scale)`, `position_contract(a, q, scale)`: one-pass weighted reductions of A (B x C x N),
  used by the backward and by the closed-form beta.
- `input_grad(a, x1, y1, x2, y2, x3)`: writes dA = x1 (x) y1 + x2 (x) y2 + x3 in A's dtype and memory format.

Passes over A (B x C x H x W; a pass reads or writes A once; default head: channel and spatial attention on):

| step | passes | what |
| --- | --- | --- |
| `attend` forward | 3 reads | GAP; u = sum_c S_c A_c (needs S, so after GAP); pooled = A T (needs T, so after u) |
| `fused_cam_weights` (beta) | 2 reads | g = kappa w_k . A (needs k, so after the logits); dS = A r (needs gbar) |
| `attend` backward | 2 reads + 1 write | dT += kappa dP . A; dS = A du (needs du, so after); dA written once |

That is 7 reads and 1 write of A per training step (no write when A needs no gradient), against roughly 15
full-size reads and writes on the PyTorch path by a count of its operations, several of them in float32 (the copy
of A in the closed form, D, dD). Not counted: B x C and B x N vectors, under 1% of A's bytes. Without channel
attention the GAP pass and both dS passes are skipped (2 + 1 reads forward, 1 read + 1 write backward); without
spatial attention pooled, beta and dS follow from the GAP (1 read forward, 0 for beta, 1 write backward).
The dependency chain GAP -> S -> u -> T -> pooled -> logits -> k -> g -> r -> dS is why the forward needs five
reads: each arrow across A is a full reduction that the next one needs.
"""
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from ..closed_form import add_mlp_grad, position_grad, spatial_beta
from . import triton_kernels as tk

__all__ = ['attend', 'channel_contract', 'position_contract', 'input_grad', 'fused_cam_weights', 'spatial_normalize']

Tensor = torch.Tensor


@torch.library.custom_op('ggam_layers::position_contract', mutates_args=())
def position_contract(a: Tensor, q: Optional[Tensor], scale: float) -> Tensor:
    """scale * sum_n q[b, n] a[b, c, n] (q None: sum over positions), float32 B x C; a is B x C x N."""
    return tk.position_contract(a, q, scale)


@position_contract.register_fake
def _(a: Tensor, q: Optional[Tensor], scale: float) -> Tensor:
    return a.new_empty(a.shape[0], a.shape[1], dtype=torch.float32)


@torch.library.custom_op('ggam_layers::channel_contract', mutates_args=())
def channel_contract(a: Tensor, v: Tensor, scale: float) -> Tensor:
    """scale * sum_c v[b, c] a[b, c, n], float32 B x N; a is B x C x N."""
    return tk.channel_contract(a, v, scale)


@channel_contract.register_fake
def _(a: Tensor, v: Tensor, scale: float) -> Tensor:
    return a.new_empty(a.shape[0], a.shape[2], dtype=torch.float32)


def _empty_grad(a: Tensor) -> Tensor:
    last = a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
    return torch.empty_like(a, memory_format=torch.channels_last if last else torch.contiguous_format)


@torch.library.custom_op('ggam_layers::input_grad', mutates_args=())
def input_grad(
        a: Tensor, x1: Tensor, y1: Tensor, x2: Optional[Tensor], y2: Optional[Tensor], x3: Optional[Tensor],
) -> Tensor:
    """dA = x1 (x) y1 + x2 (x) y2 + x3 (broadcast over positions), shaped and typed like a (B x C x H x W), in a's
    memory format when a is channels_last, else contiguous (either way its B x C x N view is no copy)."""
    return _input_grad(a, x1, y1, x2, y2, x3)


def _input_grad(a: Tensor, x1: Tensor, y1: Tensor, x2: Optional[Tensor], y2: Optional[Tensor],
                x3: Optional[Tensor]) -> Tensor:
    out = _empty_grad(a)
    tk.outer_write(out.flatten(2), x1, y1, x2, y2, x3)
    return out


@input_grad.register_fake
def _(a: Tensor, x1: Tensor, y1: Tensor, x2: Optional[Tensor], y2: Optional[Tensor], x3: Optional[Tensor]) -> Tensor:
    return _empty_grad(a)


def _kernels(a: Tensor) -> Tuple[Callable, Callable, Callable]:
    """(channel_contract, position_contract, input_grad): the custom ops while tracing (torch.compile, AOT, fake
    tensors), the kernels' launchers themselves in plain eager, which skips the custom ops' dispatch (about 10 us a
    call on a CPU host; the backward and beta make five such calls)."""
    if torch.compiler.is_compiling() or type(a) is not torch.Tensor or torch._C._len_torch_dispatch_stack() > 0:
        return channel_contract, position_contract, input_grad
    return tk.channel_contract, tk.position_contract, _input_grad


def spatial_normalize(u: Tensor, spatial_norm: str, eps: float) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """T from u (B x N, float32): returns (T, the sum of u, the 'sum' norm's softmax fallback mask)."""
    if spatial_norm == 'softmax':
        return u.softmax(dim=1), None, None
    if spatial_norm == 'sigmoid':
        return u.sigmoid(), None, None
    total = u.sum(1, keepdim=True)
    fallback = total <= eps
    safe_total = torch.where(fallback, torch.ones_like(total), total)
    return torch.where(fallback, u.softmax(dim=1), u / safe_total), safe_total, fallback


def _normalize_vjp(u: Tensor, t: Tensor, dt: Tensor, spatial_norm: str, eps: float) -> Tensor:
    """d loss / d u from d loss / d T."""
    _, total, fallback = spatial_normalize(u, spatial_norm, eps) if spatial_norm == 'sum' else (None, None, None)
    return position_grad(dt, t, spatial_norm, total, fallback)


def _f32(x: Optional[Tensor]) -> Optional[Tensor]:
    return x.float() if x is not None else None


@torch.library.custom_op('ggam_layers::attend', mutates_args=())
def attend(
        a: Tensor, fc1_w: Optional[Tensor], fc1_b: Optional[Tensor], fc2_w: Optional[Tensor], fc2_b: Optional[Tensor],
        temperature: float, spatial_norm: str, spatial_attn: bool, kappa: float, eps: float, gain: float = 1.0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Channel MLP, u, T and pooled D of the GGAM head (module docstring); float32 outputs."""
    b, c, h, w = a.shape
    n = h * w
    a3 = a.flatten(2)
    channel = fc1_w is not None
    with torch.autocast(a.device.type, enabled=False):
        m = tk.position_contract(a3, None, 1.0 / n) if channel or not spatial_attn else a.new_zeros(
            b, c, dtype=torch.float32)
        if channel:
            z1 = F.linear(m, fc1_w.float(), _f32(fc1_b))
            s = (F.linear(z1.relu(), fc2_w.float(), _f32(fc2_b)) / temperature).softmax(dim=1)
        else:
            z1 = m.new_zeros(b, 0)
            s = m.new_full((b, c), 1.0 / c)
        if spatial_attn:
            u = tk.channel_contract(a3, s, 1.0)
            t = spatial_normalize(u, spatial_norm, eps)[0]
            pooled = tk.position_contract(a3, t, kappa)
        else:
            u = m.new_zeros(b, n)
            t = m.new_ones(b, n)
            pooled = (kappa * n) * (gain * s * m if channel else m)
    return pooled, s, t, m, u, z1


@attend.register_fake
def _(
        a: Tensor, fc1_w: Optional[Tensor], fc1_b: Optional[Tensor], fc2_w: Optional[Tensor], fc2_b: Optional[Tensor],
        temperature: float, spatial_norm: str, spatial_attn: bool, kappa: float, eps: float, gain: float = 1.0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    b, c, h, w = a.shape
    rd = fc1_w.shape[0] if fc1_w is not None else 0
    f32 = {'dtype': torch.float32}
    return (a.new_empty(b, c, **f32), a.new_empty(b, c, **f32), a.new_empty(b, h * w, **f32),
            a.new_empty(b, c, **f32), a.new_empty(b, h * w, **f32), a.new_empty(b, rd, **f32))


def _attend_setup(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Tensor, ...]) -> None:
    a, fc1_w, fc1_b, fc2_w, fc2_b, temperature, spatial_norm, spatial_attn, kappa, eps, gain = inputs
    _, s, t, m, u, z1 = output
    ctx.save_for_backward(a, fc1_w, fc2_w, s, t, m, u, z1)
    ctx.options = (temperature, spatial_norm, spatial_attn, kappa, eps, gain, fc1_b is not None, fc2_b is not None)
    ctx.mark_non_differentiable(m, u, z1)


def _attend_backward(
        ctx: Any, d_pooled: Optional[Tensor], d_s: Optional[Tensor], d_t: Optional[Tensor], d_m: Optional[Tensor],
        d_u: Optional[Tensor], d_z1: Optional[Tensor],
) -> Tuple[Optional[Tensor], ...]:
    """Gradients of A and the MLP parameters from those of pooled, S and T (GAP, u, z1 are not differentiable)."""
    a, fc1_w, fc2_w, s, t, m, u, z1 = ctx.saved_tensors
    temperature, spatial_norm, spatial_attn, kappa, eps, gain, has_b1, has_b2 = ctx.options
    b, c, h, w = a.shape
    n = h * w
    channel = fc1_w is not None
    d_pooled = d_pooled.float() if d_pooled is not None else s.new_zeros(b, c)
    d_s = d_s.float() if d_s is not None else s.new_zeros(b, c)
    a3 = a.flatten(2)
    chan, pos, grad_input = _kernels(a)
    if spatial_attn:
        dt = d_t.float() if d_t is not None else t.new_zeros(b, n)
        dt = dt + chan(a3, d_pooled, kappa)                              # read 1
        du = _normalize_vjp(u, t, dt, spatial_norm, eps)
        if channel:  # S is a constant without channel attention: no dS
            d_s = d_s + pos(a3, du, 1.0)                                 # read 2
        x1, y1, x2, y2, x3 = kappa * d_pooled, t, s, du, None
    else:
        d_s = d_s + (kappa * n * gain) * m * d_pooled
        x1, y1, x2, y2 = (kappa * gain * d_pooled * s if channel else kappa * d_pooled), t.new_ones(b, n), None, None
        x3 = None
    grads = [None] * 4
    if channel:
        dz = s * (d_s - (s * d_s).sum(1, keepdim=True)) / temperature
        w1, w2 = fc1_w.float(), fc2_w.float()
        dw2 = dz.t() @ z1.relu()
        dz1 = (dz @ w2) * (z1 > 0)
        dw1 = dz1.t() @ m
        dm = dz1 @ w1
        grads = [dw1.to(fc1_w.dtype), dz1.sum(0).to(fc1_w.dtype) if has_b1 else None,
                 dw2.to(fc2_w.dtype), dz.sum(0).to(fc2_w.dtype) if has_b2 else None]
        if spatial_attn:
            x3 = dm / n
        else:
            x1 = x1 + dm / n
    needs = getattr(ctx, 'needs_input_grad', None)
    da = grad_input(a, x1, y1, x2, y2, x3) if needs is None or needs[0] else None  # write 1 (none: A is frozen)
    return (da, *grads, None, None, None, None, None, None)


attend.register_autograd(_attend_backward, setup_context=_attend_setup)


def fused_cam_weights(
        a: Tensor, class_weights: Tensor, s: Tensor, t: Tensor, m: Tensor, u: Tensor, z1: Tensor,
        fc1_w: Optional[Tensor], fc2_w: Optional[Tensor], temperature: float, spatial_norm: str, spatial_attn: bool,
        kappa: float, eps: float, cam_layer: str = 'features', gain: float = 1.0,
) -> Tensor:
    """Grad-CAM beta in closed form (`ggam_layers.head`) from the `attend` outputs, float32, detached; 2 reads of A."""
    with torch.no_grad():
        b, c, h, w = a.shape
        n = h * w
        wk = class_weights.detach().float()
        if cam_layer == 'attended':
            return kappa * wk
        a3 = a.detach().flatten(2)
        chan, pos, _ = _kernels(a3)
        s, t, m, u, z1 = s.detach(), t.detach(), m.detach(), u.detach(), z1.detach()
        channel = fc1_w is not None
        if spatial_attn:
            g = chan(a3, wk, kappa)                                      # read 1
            _, total, fallback = spatial_normalize(u, spatial_norm, eps) if spatial_norm == 'sum' else (None,) * 3
            r = position_grad(g, t, spatial_norm, total, fallback)
            beta = spatial_beta(wk, s, t, r, kappa, n)
            grad_s = pos(a3, r, 1.0) if channel else None                # read 2 (only S has parameters)
        else:
            beta = (kappa * gain) * wk * s if channel else kappa * wk
            grad_s = (kappa * n * gain) * wk * m  # no spatial map: sum_n A_{c,n} = N GAP_c, no pass over A
        if channel:
            beta = add_mlp_grad(beta, s, grad_s, z1, fc1_w.detach().float(), fc2_w.detach().float(), temperature, n)
    return beta

