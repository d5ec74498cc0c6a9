"""What each training step leaves in `.grad` before `optimizer.step()`, against the exact gradient of its loss: ours
is the loss gradient, the authors' step adds the max-logit gradient to every parameter."""
from typing import Any, Dict, List, Optional, Sequence

import torch

from benchmarks.steps import AuthorsStep, Setting, build_step, fused_differs, step_inputs

__all__ = ['gradient_check']


def _flat(tensors: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in tensors if t is not None])


def gradient_check(setting: Setting, num_classes: int, device: str, amp: str = 'none') -> List[Dict[str, Any]]:
    """For each method, how far the `.grad` left before `optimizer.step()` is from the exact gradient of its loss.

    Returns:
        Rows with the relative norm difference ||grad - dloss/dtheta|| / ||dloss/dtheta|| over the parameters
        whose exact gradient is not zero (at timm's random init the last BN of each residual block is zero, so the
        rest of that branch gets no gradient at all), and how many of those have a `.grad` off their exact gradient
        (relative difference above 1e-6).
    """
    rows = []
    for method in ('plain', 'ggam') + (('ggam_unfused',) if fused_differs(device) else ()) + (
            'ggam_autograd', 'authors'):
        torch.manual_seed(0)
        step, model = build_step(method, setting, num_classes, device, amp)
        x, y = step_inputs(setting, num_classes, device, False, seed=1)
        loss, ref = step.grads(x, y, reference=True)
        params = [p for p in model.parameters() if p.requires_grad]
        pairs = [(p.grad, r) for p, r in zip(params, ref) if r is not None and bool(r.any())]
        got, want = _flat([g for g, _ in pairs]), _flat([r for _, r in pairs])
        changed = sum(bool((g - r).norm() > 1e-6 * r.norm()) for g, r in pairs)
        rows.append({'method': method, 'loss': float(loss), 'grad_rel_diff': float((got - want).norm() / want.norm()),
                     'params_off': f'{changed}/{len(pairs)}'})
        if isinstance(step, AuthorsStep):
            step.remove()
    return rows

