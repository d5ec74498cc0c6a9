"""`python -m benchmarks.step_time --update PART ...`: measure only some parts (memory, grad_check, head, inference)
and merge them into an existing result file."""
import argparse
import json
from pathlib import Path
from typing import List

from benchmarks.common import command_line, machine_info
from benchmarks.grad_check import gradient_check
from benchmarks.head_time import head_benchmark
from benchmarks.inference_time import inference_rows
from benchmarks.kernel_bandwidth import kernel_benchmark
from benchmarks.memory import memory_ratios, memory_row
from benchmarks.step_report import write_report
from benchmarks.steps import Setting, config_label, fused_differs, step_configs, step_inputs

__all__ = ['update_result']


def update_result(args: argparse.Namespace, name: str) -> List[Path]:
    """Measure only `args.update` (memory, grad_check, head, inference), merge it into an existing result."""
    path = Path(args.out_dir) / f'{name}.json'
    if path.exists():
        with open(path) as f:
            data = json.load(f)
        meta, rows = data['meta'], data['rows']
    else:
        meta, rows = {'machine': machine_info(), 'device': args.device, 'amp': args.amp}, []
    if 'memory' in args.update:
        compile_settings = set(args.compile_settings) if args.compile_settings is not None else None
        for text in args.settings:
            setting = Setting.parse(text)
            compile_methods = args.compile_methods if compile_settings is None or text in compile_settings else []
            for method, compiled in step_configs(args.methods, compile_methods):
                label = config_label(method, compiled)
                row = next((r for r in rows if r['setting'] == str(setting) and r['method'] == label), None)
                if row is None:
                    row = {'setting': str(setting), 'method': label}
                    rows.append(row)
                for key in ('memory_error', 'mem_mb', 'mem_ratio', 'step_mem_ratio', 'peak_ratio'):
                    row.pop(key, None)
                row.update(memory_row(method, compiled, setting, args))
        memory_ratios(rows)
        meta['memory'] = args.memory
    if 'inference' in args.update:
        infer = [r for r in meta.get('inference') or [] if r['setting'] not in args.settings]
        for text in args.settings:
            setting = Setting.parse(text)
            x, _ = step_inputs(setting, args.num_classes, args.device, args.channels_last)
            infer += inference_rows(setting, args, x)
        meta['inference'] = infer
    if 'head' in args.update:
        head = [r for r in meta.get('head') or [] if r['setting'] not in args.settings]
        for text in args.settings:
            setting = Setting.parse(text)
            head += [dict(r, setting=text) for r in head_benchmark(
                setting, args.num_classes, args.device, args.amp, args.warmup, args.repeats,
                compiled=args.head_compile or bool(args.compile_methods), channels_last=args.channels_last)]
        meta['head'] = head
        if fused_differs(args.device):
            meta['kernels'] = [dict(r, setting=text) for text in args.settings for r in kernel_benchmark(
                Setting.parse(text), args.num_classes, args.device, args.amp, args.channels_last, args.warmup,
                args.repeats)]
    if 'grad_check' in args.update:
        gsetting = Setting.parse(args.settings[-1])
        meta['grad_check'] = [dict(r, setting=str(gsetting))
                              for r in gradient_check(gsetting, args.num_classes, args.device)]
    meta.setdefault('updates', []).append(command_line('step_time'))
    return write_report(name, args.out_dir, meta, rows)

