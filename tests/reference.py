"""A float64 reference written straight from the paper's equations, independent of the package's code.

Per sample and with explicit sums, as in the paper (arXiv 2101.09666, eq. 1 to 6); the tests compare the package's
vectorised modules against it. It reads only the attention's FC weights and the classifier's weights.
"""
import math

import torch

__all__ = ['ref_attention', 'ref_head_logits', 'ref_beta', 'ref_kl', 'ref_ggam_divergence', 'ref_loss']


def _softmax(v: torch.Tensor) -> torch.Tensor:
    e = torch.exp(v - v.max())
    return e / e.sum()


def ref_attention(a, w1, b1, w2, b2, spatial_norm='softmax', channel_attn=True, spatial_attn=True, tau=1.0, eps=1e-6,
                  rescale=False, gate=None):
    """Eq. 1 to 3 for one sample a (C x H x W). Returns S (C), T (H x W), D (C x H x W).

    `rescale`: the channel-only head hands the classifier C * S * A (ours) instead of eq. 1's S * A.
    `gate`: a number g; D = A * (1 - g + g * N T) (sigmoid: 1 - g + g T), the spatial gate (ours), instead of eq. 2.
    """
    c, h, w = a.shape
    n = h * w
    if channel_attn:
        pooled = torch.stack([a[i].sum() / n for i in range(c)])          # F_cg: global average pooling
        hidden = torch.clamp(w1 @ pooled + b1, min=0)                       # FC, ReLU
        s = _softmax((w2 @ hidden + b2) / tau)                              # FC, softmax over channels
    else:
        s = torch.full((c,), 1.0 / c, dtype=a.dtype)
    if not spatial_attn:
        gain = c if rescale else 1
        out = torch.stack([gain * s[i] * a[i] for i in range(c)]) if channel_attn else a.clone()   # eq. 1
        return s, torch.ones(h, w, dtype=a.dtype), out
    b = torch.stack([s[i] * a[i] for i in range(c)])                         # eq. 1: b_c = s_c a_c
    u = sum(b[i] for i in range(c))                                          # channel-wise summation
    if spatial_norm == 'softmax':
        t = _softmax(u.flatten()).view(h, w)                                 # 2D softmax (paper text)
    elif spatial_norm == 'sum':
        total = u.sum()
        t = u / total if total > eps else _softmax(u.flatten()).view(h, w)   # eq. 3 (softmax fallback)
    else:
        t = 1 / (1 + torch.exp(-u))                                          # authors' code
    if gate is not None:                                                     # ours: a gate from the plain head
        scale = 1 if spatial_norm == 'sigmoid' else n
        return s, t, torch.stack([a[i] * (1 - gate + gate * scale * t) for i in range(c)])
    d = torch.stack([a[i] * t for i in range(c)])                            # eq. 2: d_c = a_c (.) T
    return s, t, d


def ref_head_logits(a, attn_weights, fc_w, fc_b, pool='avg', **attn_kwargs):
    """Class scores y for one sample: attention, pooling of D, linear classifier."""
    _, _, d = ref_attention(a, *attn_weights, **attn_kwargs)
    pooled = d.sum((1, 2)) if pool == 'sum' else d.mean((1, 2))
    return fc_w @ pooled + fc_b


def ref_beta(a, k, attn_weights, fc_w, fc_b, pool='avg', cam_layer='features', **attn_kwargs):
    """Eq. 4 for one sample by autograd through the reference head: mean over positions of d y_k / d A (or D)."""
    a = a.detach().clone().requires_grad_(True)
    if cam_layer == 'attended':
        _, _, d = ref_attention(a, *attn_weights, **attn_kwargs)
        d = d.detach().requires_grad_(True)
        pooled = d.sum((1, 2)) if pool == 'sum' else d.mean((1, 2))
        (g,) = torch.autograd.grad((fc_w @ pooled + fc_b)[k], d)
    else:
        (g,) = torch.autograd.grad(ref_head_logits(a, attn_weights, fc_w, fc_b, pool, **attn_kwargs)[k], a)
    return g.mean((1, 2))


def ref_kl(p, q):
    """KL(p || q) = sum_i p_i log(p_i / q_i)."""
    return sum(float(p[i]) * math.log(float(p[i]) / float(q[i])) for i in range(len(p)) if p[i] > 0)


def ref_target(beta, squash='sigmoid', target_norm='none', temperature=1.0):
    """beta~: squashed Grad-CAM weights as a distribution (sec. 2.3 of the paper; docs/design.md)."""
    beta = [float(v) for v in beta]
    if target_norm == 'standardize':
        m = sum(beta) / len(beta)
        sd = math.sqrt(sum((v - m) ** 2 for v in beta) / len(beta))
        beta = [(v - m) / (sd + 1e-6) for v in beta]
    beta = [v / temperature for v in beta]
    if squash == 'softmax':
        mx = max(beta)
        e = [math.exp(v - mx) for v in beta]
    else:
        e = [1 / (1 + math.exp(-v)) for v in beta]
    return [v / sum(e) for v in e]


def ref_ggam_divergence(s, beta, squash='sigmoid', kl='symmetric', target_norm='none', temperature=1.0):
    """Eq. 5 for one sample."""
    q = ref_target(beta, squash, target_norm, temperature)
    p = [float(v) for v in s]
    if kl == 'forward':
        return ref_kl(p, q)
    if kl == 'reverse':
        return ref_kl(q, p)
    return 0.5 * (ref_kl(p, q) + ref_kl(q, p))


def ref_loss(logits, target, s, beta, lam=1.0, **kwargs):
    """Eq. 6 averaged over the batch: CE + lambda * L_GGAM."""
    total = 0.0
    for i in range(logits.shape[0]):
        y = [float(v) for v in logits[i]]
        mx = max(y)
        lse = mx + math.log(sum(math.exp(v - mx) for v in y))
        ce = lse - y[int(target[i])]
        total += ce + lam * ref_ggam_divergence(s[i], beta[i], **kwargs)
    return total / logits.shape[0]
