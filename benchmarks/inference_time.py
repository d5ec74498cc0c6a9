"""Inference time, `model(x)` in eval mode under no_grad: the GGAM model against the plain timm model."""
import argparse
import gc
from typing import Callable, Dict, List

import torch

from benchmarks.steps import Setting, autocast, build_model, fused_differs
from benchmarks.timing import time_steps

__all__ = ['inference_rows']


def inference_rows(setting: Setting, args: argparse.Namespace, x: torch.Tensor, log: Callable = print) -> List[Dict]:
    """`model(x)` in eval mode under no_grad: the GGAM model against the plain timm model."""
    device, amp = args.device, args.amp
    fns = {}
    for method in ('plain', 'ggam') + (('ggam_unfused',) if fused_differs(device) else ()):
        torch.manual_seed(0)
        model = build_model(method, setting, args.num_classes, device, args.channels_last).eval()

        def infer(m=model):
            with torch.no_grad(), autocast(device, amp):
                return m(x)
        fns[method] = infer
    res = time_steps(fns, args.warmup, args.repeats, device, log)
    rows = []
    for method, t in res.items():
        rows.append({'setting': str(setting), 'method': method, **t,
                     'ratio_vs_plain': t['median_s'] / res['plain']['median_s']})
        if 'cpu_median_s' in t:
            rows[-1]['cpu_ratio_vs_plain'] = t['cpu_median_s'] / res['plain']['cpu_median_s']
    del fns
    gc.collect()
    return rows

