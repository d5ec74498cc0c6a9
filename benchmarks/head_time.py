"""The head and loss alone, forward + backward, on features of the backbone's shape and dtype: the plain head
(pooling, linear, CE) against the GGAM head + `GGAMLoss`, fused and unfused, eager and compiled."""
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.steps import AMP_DTYPES, FUSED, Setting, autocast, fused_differs
from benchmarks.timing import time_steps
from ggam_layers import GGAMHead, GGAMLoss

__all__ = ['head_features', 'head_benchmark']


def head_features(setting: Any, device: torch.device, amp: Optional[str], channels_last: bool):
    """Random ReLU features of the backbone's last stage for `setting` (shape, autocast dtype, memory format), and
    the generator that drew them (seeded 0)."""
    backbone = timm.create_model(setting.model, num_classes=0, pretrained=False)
    c, red = backbone.num_features, backbone.feature_info[-1]['reduction']
    del backbone
    hw = setting.img_size // red
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(setting.batch, c, hw, hw, generator=g).relu().to(device, AMP_DTYPES[amp] or torch.float32)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    return feats, g


def head_benchmark(
        setting: Setting, num_classes: int, device: str, amp: str, warmup: int, repeats: int,
        compiled: bool, log: Callable = print, channels_last: bool = False,
) -> List[Dict[str, Any]]:
    """Forward + backward of the head and loss alone on features A (the backbone's output), eager and compiled.

    The plain head (global average pool, linear, CE) against the GGAM head + `GGAMLoss` (fused where the device has
    the kernels, and unfused), on features of the shape, dtype (the autocast dtype, as the backbone gives them) and
    memory format the backbone gives for the setting.
    """
    feats, g = head_features(setting, device, amp, channels_last)
    c, hw, dtype = feats.shape[1], feats.shape[-1], feats.dtype
    feats.requires_grad_(True)
    y = torch.randint(0, num_classes, (setting.batch,), generator=g).to(device)
    torch.manual_seed(0)
    plain_fc = nn.Linear(c, num_classes).to(device)
    head = GGAMHead(c, num_classes, fused=FUSED['ggam']).to(device)
    unfused = GGAMHead(c, num_classes, fused=False).to(device)
    unfused.load_state_dict(head.state_dict())
    crit = GGAMLoss()

    def plain_fn(a, t):
        return F.cross_entropy(plain_fc(a.mean((2, 3))).float(), t)

    def ggam_fn(a, t):
        return crit(head.forward_ggam(a), t)

    def unfused_fn(a, t):
        return crit(unfused.forward_ggam(a), t)

    fns = {'plain_head': plain_fn, 'ggam_head': ggam_fn}
    if fused_differs(device):
        fns['ggam_head_unfused'] = unfused_fn
    if compiled:
        for key, fn in list(fns.items()):
            fns[key + '_compiled'] = torch.compile(fn, fullgraph=True)

    def run(fn):
        def go():
            feats.grad = None
            with autocast(device, amp):
                loss = fn(feats, y)
            loss.backward()
        return go

    res = time_steps({k: run(fn) for k, fn in fns.items()}, warmup, repeats, device, log)
    a_bytes = feats.numel() * feats.element_size()
    rows = []
    for k, v in res.items():
        row = {'part': k, 'features': f'{setting.batch}x{c}x{hw}x{hw} {str(dtype)[6:]}', 'uses_fused': False, **v}
        if k.startswith('ggam_head') and 'unfused' not in k:
            row['uses_fused'] = head.uses_fused(feats)
        if row['uses_fused']:  # 5 reads forward (3 attention, 2 beta), 2 reads + 1 write backward: ops docstring
            row['a_passes'] = 8
            row['bytes_moved_mb'] = 8 * a_bytes / 1e6
            row['achieved_gb_s'] = 8 * a_bytes / v['median_s'] / 1e9
        rows.append(row)
    return rows

