"""Each fused kernel of the GGAM head alone, with the bytes of A it must move and the bandwidth that achieves."""
from typing import Any, Callable, Dict, List

import torch

from benchmarks.head_time import head_features
from benchmarks.steps import Setting
from benchmarks.timing import time_steps
from ggam_layers import GGAMHead
from ggam_layers.kernels import load_ops

__all__ = ['kernel_benchmark']


def kernel_benchmark(
        setting: Setting, num_classes: int, device: str, amp: str, channels_last: bool, warmup: int, repeats: int,
        log: Callable = print,
) -> List[Dict[str, Any]]:
    """Each fused kernel alone, and the fused attention op forward and backward, on the head's features.

    bytes_moved counts the bytes of A each must read or write (passes x B C H W x element size; the B x C and B x N
    vectors are under 1% of it); achieved_gb_s = bytes_moved / median time: against the GPU's peak bandwidth
    (about 4.8 TB/s on an H200) it says how close to memory speed each kernel runs.
    """
    ops = load_ops()
    a, g = head_features(setting, device, amp, channels_last)
    c, hw, dtype = a.shape[1], a.shape[-1], a.dtype
    torch.manual_seed(0)
    head = GGAMHead(c, num_classes, fused=True).to(device)
    attn = head.attn
    a3 = a.flatten(2)
    b, n = setting.batch, hw * hw
    v = torch.rand(b, c, device=device)
    q = torch.rand(b, n, device=device)
    weights = (attn.fc1.weight, attn.fc1.bias, attn.fc2.weight, attn.fc2.bias, 1.0, 'softmax', True, 1.0, 1e-6)
    a_grad = a.detach().clone().requires_grad_(True)

    def attend_fwd_bwd():
        pooled, s, t, *_ = ops.attend(a_grad, *weights)
        torch.autograd.backward([pooled, s], [v, v])

    parts = {
        'gap: position_contract(A, 1/N)': (lambda: ops.position_contract(a3, None, 1.0 / n), 1),
        'u or g: channel_contract(A, v)': (lambda: ops.channel_contract(a3, v, 1.0), 1),
        'pooled or dS: position_contract(A, q)': (lambda: ops.position_contract(a3, q, 1.0), 1),
        'dA: input_grad (write)': (lambda: ops.input_grad(a, v, q, v, q, v), 1),
        'attend forward (op, with the MLP)': (lambda: ops.attend(a, *weights), 3),
        'attend forward + backward': (attend_fwd_bwd, 6),
    }
    res = time_steps({k: fn for k, (fn, _) in parts.items()}, warmup, repeats, device, log)
    a_bytes = a.numel() * a.element_size()
    layout = 'channels_last' if channels_last else 'NCHW'
    return [{'kernel': k, 'features': f'{b}x{c}x{hw}x{hw} {str(dtype)[6:]} {layout}', 'a_passes': parts[k][1],
             'bytes_moved_mb': parts[k][1] * a_bytes / 1e6, 'median_s': t['median_s'], 'iqr_s': t['iqr_s'],
             'achieved_gb_s': parts[k][1] * a_bytes / t['median_s'] / 1e9} for k, t in res.items()]
