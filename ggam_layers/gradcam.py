"""Hook-free Grad-CAM channel weights (eq. 4 of the paper).

    beta_c = 1 / (H W) * sum_{i,j} d y_k / d A_{c,i,j}

`torch.autograd.grad` is taken with respect to the features A only: it never calls `.backward()`, never walks into
the backbone that produced A, never touches any parameter's `.grad`, and keeps the graph for the training backward.
"""
from typing import Callable, NamedTuple, Optional

import torch

__all__ = ['GradCamWeights', 'grad_cam_weights', 'select_classes']


class GradCamWeights(NamedTuple):
    """Result of `grad_cam_weights`.

    Attributes:
        weights: beta, B x C, the spatial mean of d y_k / d A (detached).
        scores: The head's class scores, B x K, still attached to the graph.
        classes: The class k used for each sample, B (long).
    """
    weights: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


def select_classes(scores: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The class per sample whose score is explained: `target` if given, else the argmax of `scores`.

    Args:
        scores: Class scores, B x K.
        target: Optional class indices, B.
    """
    if scores.ndim != 2:
        raise ValueError(f'scores must be (B, K), got shape {tuple(scores.shape)}')
    if target is None:
        return scores.detach().argmax(dim=1)
    if target.ndim != 1 or target.shape[0] != scores.shape[0]:
        raise ValueError(f'target must be ({scores.shape[0]},) class indices, got shape {tuple(target.shape)}')
    if target.is_floating_point():
        raise TypeError(f'target must hold integer class indices, got {target.dtype}')
    return target


def grad_cam_weights(
        features: torch.Tensor,
        head: Callable[[torch.Tensor], torch.Tensor],
        target: Optional[torch.Tensor] = None,
        per_sample: bool = False,
) -> GradCamWeights:
    """Grad-CAM channel weights of any head, by autograd with respect to the features only.

    Args:
        features: A, B x C x spatial... (any number of spatial dims). If it does not require grad, a detached leaf
            copy is used, so the returned scores are then not connected to whatever produced `features`.
        head: Maps features to class scores B x K.
        target: Class per sample; the predicted class (argmax) when None.
        per_sample: Take one vector-Jacobian product per sample, exact even when the head
            couples the samples of a batch (BatchNorm in train mode). Costs B products instead of one.

    Returns:
        beta (detached), the attached scores and the classes used.
    """
    if features.ndim < 3:
        raise ValueError(f'features must be (B, C, *spatial), got shape {tuple(features.shape)}')
    if features.shape[0] == 0:
        raise ValueError('features is an empty batch; expected B >= 1')
    with torch.enable_grad():
        if not features.requires_grad:
            features = features.detach().requires_grad_(True)
        scores = head(features)
        if scores.ndim != 2 or scores.shape[0] != features.shape[0]:
            raise ValueError(f'head must return ({features.shape[0]}, K) scores, got shape {tuple(scores.shape)}')
        classes = select_classes(scores, target)
        spatial = tuple(range(2, features.ndim))
        if per_sample:
            picked = scores.gather(1, classes[:, None])[:, 0]
            grads = torch.stack([
                torch.autograd.grad(picked[i], features, retain_graph=True)[0][i] for i in range(scores.shape[0])
            ])
        else:
            score = scores.gather(1, classes[:, None]).sum()
            (grads,) = torch.autograd.grad(score, features, retain_graph=True)
    return GradCamWeights(grads.mean(spatial).detach(), scores, classes)
