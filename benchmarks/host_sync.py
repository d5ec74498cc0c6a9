"""Whether the GGAM loss or step makes a host sync on CUDA (`torch.cuda.set_sync_debug_mode('error')`)."""
from typing import Any, Dict

import torch

from benchmarks.steps import Setting, autocast, build_step, step_inputs
from ggam_layers import GGAMLoss

__all__ = ['host_sync_check']


def host_sync_check(setting: Setting, num_classes: int, amp: str, channels_last: bool) -> Dict[str, Any]:
    """On CUDA: run GGAM parts under `torch.cuda.set_sync_debug_mode('error')`; any host sync raises.

    Scopes: 'loss' (head `forward_ggam` + `GGAMLoss` + backward through the head, features computed outside),
    'step' (the whole training step: forward, loss, backward, optimizer step), and 'plain_step' for reference.
    """
    if not torch.cuda.is_available():
        return {'skipped': 'no CUDA device'}
    out: Dict[str, Any] = {}
    for scope in ('loss', 'step', 'plain_step'):
        method = 'plain' if scope == 'plain_step' else 'ggam'
        step, model = build_step(method, setting, num_classes, 'cuda', amp, channels_last)
        x, y = step_inputs(setting, num_classes, 'cuda', channels_last)
        step(x, y)  # warm-up outside the check (cuDNN autotuning, lazy init)
        torch.cuda.synchronize()
        crit = GGAMLoss()
        try:
            if scope == 'loss':
                with autocast('cuda', amp):
                    feats = model.features_to_nchw(model.forward_features(x)).detach().requires_grad_(True)
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode('error')
                with autocast('cuda', amp):
                    loss = crit(model.head.forward_ggam(feats), y)
                loss.backward()
            else:
                torch.cuda.set_sync_debug_mode('error')
                step(x, y)
            out[scope] = 'no host sync'
        except RuntimeError as e:
            out[scope] = f'host sync: {str(e).splitlines()[0]}'
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        del step, model
    return out

