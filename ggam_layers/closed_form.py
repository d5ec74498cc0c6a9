"""The algebra of Grad-CAM beta in closed form, one copy for the PyTorch head and the fused kernels.

`ggam_layers.head` derives beta for a linear classifier on pooled attended maps (its module docstring has the
equations); these are the steps both paths share once they have g = d y / d T and d y / d S: back through the
spatial normalisation, the spatial part of beta, and back through the channel softmax and its MLP. Inputs are
detached B x N or B x C tensors in one floating dtype; nothing here reads the feature maps A.
"""
from typing import Optional

import torch

__all__ = ['position_grad', 'spatial_beta', 'add_mlp_grad']


def position_grad(g: torch.Tensor, t: torch.Tensor, spatial_norm: str, total: Optional[torch.Tensor] = None,
                  fallback: Optional[torch.Tensor] = None) -> torch.Tensor:
    """r = d y / d u from g = d y / d T through T = norm(u), B x N (also the vector-Jacobian product of the norm).

    Args:
        g: d y / d T, B x N.
        t: T, B x N.
        spatial_norm: 'softmax', 'sigmoid' or 'sum'.
        total: For 'sum': the sum of u per sample, B x 1 (any value where `fallback` holds).
        fallback: For 'sum': B x 1 bool, the samples that took the softmax instead.
    """
    if spatial_norm == 'sigmoid':
        return g * t * (1 - t)
    gbar = (t * g).sum(1, keepdim=True)
    if spatial_norm == 'softmax':
        return t * (g - gbar)
    return torch.where(fallback, t * (g - gbar), (g - gbar) / total)


def spatial_beta(w: torch.Tensor, s: torch.Tensor, t: torch.Tensor, r: torch.Tensor, kappa, n: int) -> torch.Tensor:
    """The part of beta through A in D = A * T and through u = sum_c S_c A_c (B x C): kappa w sum(T) / N + S sum(r) / N.

    Args:
        w: The explained class's classifier row per sample, B x C.
        s / t / r: S (B x C), T and r (B x N).
        kappa: 1 / N for average pooling, 1 for sum pooling (times the gate's scale for a gated T); a float or a
            0-dim tensor.
        n: N, the number of positions.
    """
    return (kappa / n) * w * t.sum(1, keepdim=True) + s * r.sum(1, keepdim=True) / n


def add_mlp_grad(beta: torch.Tensor, s: torch.Tensor, grad_s: torch.Tensor, z1: torch.Tensor, fc1_w: torch.Tensor,
                 fc2_w: torch.Tensor, temperature: float, n: int) -> torch.Tensor:
    """beta plus the part through the channel attention: back through softmax(z / tau), fc2, ReLU, fc1 and the GAP.

    Args:
        beta: The other parts, B x C.
        s / grad_s: S and d y / d S, B x C.
        z1: fc1's output before the ReLU, B x hidden.
        fc1_w / fc2_w: The two weights of the MLP.
        temperature: tau of the channel softmax.
        n: N, the number of positions (the GAP's 1 / N).
    """
    grad_z = s * (grad_s - (s * grad_s).sum(1, keepdim=True)) / temperature
    grad_h1 = (grad_z @ fc2_w) * (z1 > 0)
    return beta + (grad_h1 @ fc1_w) / n
