"""What a trained GGAM model does with its channels: the entropy of S, its correlation with the Grad-CAM weights
beta and the spread of the GGAM target, over a set of images (`benchmarks.ablation` measures every run with it)."""
import math
from typing import Any, Dict

import torch

from benchmarks.ablation_plan import TARGETS, RunSpec
from ggam_layers.loss import target_log_probs

__all__ = ['channel_stats']


@torch.no_grad()
def channel_stats(model, images: torch.Tensor, targets: torch.Tensor, spec: RunSpec,
                  batch_size: int = 250) -> Dict[str, Any]:
    """Entropy of S, its correlation with beta and the spread of the Grad-CAM target over a set of images.

    Args:
        model: A trained GGAM model (eval mode).
        images: Preprocessed images, N x 3 x H x W.
        targets: Labels, N.
        spec: The run's configuration (its target options give the target spread).
        batch_size: Images per forward pass.

    Returns:
        entropy_S (H(S) / log C, mean), max_S_times_C (C * max S, mean; 1 for a uniform S), corr_S_beta (Pearson
        over channels per sample, mean; None when S is constant), target_spread (C * (max - min) of beta~, mean),
        beta_abs (mean |beta|), top1 (this pass).
    """
    if spec.attention != 'ggam':  # SE / CBAM: no channel distribution S, no GGAM target
        hits = sum(int((model(images[i:i + batch_size]).argmax(1) == targets[i:i + batch_size]).sum())
                   for i in range(0, images.shape[0], batch_size))
        return {'entropy_S': None, 'max_S_times_C': None, 'corr_S_beta': None, 'target_spread': None,
                'beta_abs': None, 'top1': hits / images.shape[0]}
    target = TARGETS['literal' if spec.target == 'none' else spec.target]
    ent, smax, corr, spread, babs, hits = [], [], [], [], [], 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        out = model.forward_ggam(x)
        s = out.channel_weights.double()
        s = s / s.sum(1, keepdim=True)  # float32 rounding of S (and of the constant 1/C) would push H above log C
        beta = out.cam_weights.double()
        c = s.shape[1]
        ent.append(-(s * s.clamp_min(1e-300).log()).sum(1) / math.log(c))
        smax.append(c * s.amax(1))
        sc, bc = s - s.mean(1, keepdim=True), beta - beta.mean(1, keepdim=True)
        denom = (sc.square().sum(1) * bc.square().sum(1)).sqrt()
        corr.append(torch.where(denom > 0, (sc * bc).sum(1) / denom.clamp_min(1e-300), torch.nan))
        q = target_log_probs(beta, target).exp()
        spread.append(c * (q.amax(1) - q.amin(1)))
        babs.append(beta.abs().mean(1))
        hits += int((out.logits.argmax(1) == targets[start:start + batch_size]).sum())
    corr_all = torch.cat(corr)
    return {
        'entropy_S': float(torch.cat(ent).mean()),
        'max_S_times_C': float(torch.cat(smax).mean()),
        'corr_S_beta': None if bool(corr_all.isnan().all()) else float(corr_all.nanmean()),
        'target_spread': float(torch.cat(spread).mean()),
        'beta_abs': float(torch.cat(babs).mean()),
        'top1': hits / images.shape[0],
    }
