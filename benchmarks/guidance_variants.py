"""Beyond the paper: Grad-CAM guidance of the spatial map T, a variant tested against the uniform-KL control.

With real ImageNet features as with the synthetic backbones, the paper's channel target sigmoid(beta) normalised is
flat (|beta| is about 1e-3, so sigmoid(beta) is 0.5 to within 0.1%): the loss holds S at uniform, and the uniform
control does as well. The scale of beta is the problem, not its direction. The Grad-CAM *map* of the explained
class, relu(sum_c beta_c A_c) normalised over the H x W positions, is free of that scale (multiplying beta by any
positive number leaves it unchanged) and says where the evidence for the class is, which is what T is meant to
show. The variant `spatial` pulls T towards it with the paper's symmetric KL, in place of the channel term:

    L = CE + lam * 1/2 (KL(T || M) + KL(M || T)),   M = (1 - eps) relu(sum_c beta_c A_c) / sum + eps / N

(beta and A detached; M uniform where the map is zero everywhere; eps = 1e-3 keeps KL(T || M) finite). The study
trained it through `ggam_layers.train.train(cfg, loss_fn=...)` with the entry rule written before the runs (ahead of
the uniform control on at least 4 of 5 seeds, the mean paired difference above its spread: `ablation_report.
enters_package`); it passed (+5.80 ± 5.45, 4 of 5) and is now the package's `ggam_layers.spatial_guidance`
(`ggam-layers train --guide spatial`), which this module re-exports for the study.
"""
from typing import Dict

import torch.nn as nn

from ggam_layers.spatial_guidance import SpatialGuidanceLoss, gradcam_position_target

__all__ = ['VARIANTS', 'VARIANT_TEXT', 'SpatialGuidanceLoss', 'gradcam_position_target', 'variant_loss']

VARIANT_TEXT: Dict[str, str] = {
    'spatial': 'T pulled towards the Grad-CAM map relu(sum_c beta_c A_c) of the explained class, normalised over '
               'positions (scale free), symmetric KL; no channel term',
}
VARIANTS = tuple(VARIANT_TEXT)


def variant_loss(name: str, lam: float, label_smoothing: float = 0.0) -> nn.Module:
    """The criterion of variant `name` (a key of `VARIANT_TEXT`) at weight `lam`."""
    if name == 'spatial':
        return SpatialGuidanceLoss(lam=lam, label_smoothing=label_smoothing)
    raise ValueError(f'variant must be one of {VARIANTS}, got {name!r}')
