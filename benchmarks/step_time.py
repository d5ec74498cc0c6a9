"""Training-step time and peak memory of GGAM against plain fine-tuning and the authors' two-backward step.

Four ways to train the same timm backbone, measured in the same run on the same inputs:

- ``plain``: `timm.create_model(name, num_classes=K)` with cross-entropy, the baseline of every ratio.
- ``ggam``: `wrap_timm_model(name, num_classes=K)`, `forward_ggam` and `GGAMLoss`; beta in closed form, so the step
  is one forward and one backward. On CUDA (with Triton) the head runs the fused kernels (`GGAMHead(fused='auto')`,
  `ggam_layers.kernels`); `--force-fused` makes it run them elsewhere too (the CPU under TRITON_INTERPRET=1).
- ``ggam_unfused``: the same with the head's PyTorch path (`fused=False`): what ``ggam`` was before the fused
  kernels. Timed by default only where the two differ (CUDA, or `--force-fused`).
- ``ggam_autograd``: the same with `closed_form=False`: beta by `torch.autograd.grad` on the head only.
- ``authors``: the step of the authors' cars_sp_CAM.py (PRIS-CV/CAM-Guided-Attention) on the same GGAM model: a
  forward hook registers a tensor hook on the attention output D that saves its gradient, `optimizer.zero_grad()`,
  `max_logit.backward(retain_graph=True)` through the whole model, beta = softmax(mean of the saved gradient),
  loss = CE + `F.kl_div(beta.log(), S, reduction='sum')`, `loss.backward()`, `optimizer.step()`. The max-logit
  gradient stays in every parameter's `.grad` and is applied by the step (measured by the gradient check below).
  Its hooks need the attended map D, so its head always runs the PyTorch path.

Every step is `zero_grad`, forward, loss, backward, SGD step (momentum 0.9). Times are medians over interleaved
rounds (one step of every configuration per round, so a load change on a shared machine hits all of them alike);
min, max and IQR are kept, and on the CPU the process CPU time too. Peak memory: on CUDA,
`torch.cuda.max_memory_allocated` during the measured steps minus what was allocated before building the model; on
the CPU, peak resident set size (VmHWM, reset through /proc/self/clear_refs after warm-up) during the measured steps
minus the RSS before building the model, each configuration in a fresh interpreter (`--memory-probe`,
`benchmarks/memory.py`) where glibc serves every allocation of 64 KiB or more by mmap (so a freed tensor leaves the
resident set at once and the peak is that of live memory, not of heap fragmentation). Also measured: inference
(`model(x)`, eval, no_grad) of GGAM against the plain backbone, the
GGAM head + loss alone (fused and unfused, eager against torch.compile; with the fused kernels also each kernel
alone, with the bytes of A it must move and the bandwidth that achieves), the gradient each method leaves in `.grad`
against the exact gradient of its loss, and on CUDA whether the GGAM loss makes any host sync.

This module is the command line and the step-time measurement itself (`run_setting`); each other measurement is its own
module, its names re-exported here: the steps (`steps`: `Setting`, `TrainStep`, `AuthorsStep`, `build_step`), the
interleaved timing (`timing`), memory (`memory`), inference (`inference_time`), the gradient check (`grad_check`), the
head (`head_time`), the kernels (`kernel_bandwidth`), the host-sync check (`host_sync`), the targets (`step_targets`),
the result files (`step_report`) and `--update` (`step_update`).

Examples::

    python -m benchmarks.step_time --threads 2      # CPU: resnet50 @ 448 b2 and resnet18 @ 224 b2
    python -m benchmarks.step_time --quick          # CI smoke run, < 60 s
    python -m benchmarks.step_time --device cuda --amp bf16 --sync-check  # see gpu_check.sh
"""
import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.common import command_line, machine_info
from benchmarks.grad_check import gradient_check
from benchmarks.head_time import head_benchmark
from benchmarks.host_sync import host_sync_check
from benchmarks.inference_time import inference_rows
from benchmarks.kernel_bandwidth import kernel_benchmark
from benchmarks.memory import malloc_trim, measure_memory, memory_probe, memory_ratios, memory_row
from benchmarks.step_report import write_report
from benchmarks.step_targets import targets
from benchmarks.step_update import update_result
from benchmarks.steps import (
    AMP_DTYPES,
    COMPILABLE,
    FUSED,
    METHODS,
    AuthorsStep,
    Setting,
    TrainStep,
    build_model,
    build_step,
    config_label,
    fused_differs,
    step_configs,
    step_inputs,
)
from benchmarks.timing import time_steps

__all__ = [
    'METHODS', 'COMPILABLE', 'FUSED', 'AMP_DTYPES', 'Setting', 'TrainStep', 'AuthorsStep', 'build_model', 'build_step',
    'time_steps', 'measure_memory', 'gradient_check', 'head_benchmark', 'host_sync_check', 'kernel_benchmark',
    'fused_differs', 'inference_rows', 'run_setting', 'targets', 'write_report', 'update_result', 'main',
]

# the random inputs of a setting, under the name the tests use (tests/test_compile_amp.py)
_inputs = step_inputs


def run_setting(setting: Setting, args: argparse.Namespace, log: Callable = print) -> Dict[str, List[Dict]]:
    """Training, memory and inference measurements of one setting."""
    device, amp = args.device, args.amp
    log(f'== {setting} ({device}, amp {amp}, channels_last {args.channels_last})')
    x, y = step_inputs(setting, args.num_classes, device, args.channels_last)
    cfgs = step_configs(args.methods, args.compile_methods)
    steps, models = {}, []
    for method, compiled in cfgs:
        torch.manual_seed(0)
        step, model = build_step(method, setting, args.num_classes, device, amp, args.channels_last, compiled)
        steps[config_label(method, compiled)] = (lambda s=step: s(x, y))
        models.append(model)
    timed = time_steps(steps, args.warmup, args.repeats, device, log)
    base = timed.get('plain', {}).get('median_s')
    train_rows = []
    for method, compiled in cfgs:
        t = timed[config_label(method, compiled)]
        row = {'setting': str(setting), 'method': config_label(method, compiled), **t}
        base_c = timed.get(config_label('plain', compiled), {}).get('median_s', base)
        row['ratio_vs_plain'] = t['median_s'] / base if base else None
        row['ratio_vs_plain_same_mode'] = t['median_s'] / base_c if base_c else None
        if 'cpu_median_s' in t and 'plain' in timed:
            row['cpu_ratio_vs_plain'] = t['cpu_median_s'] / timed['plain']['cpu_median_s']
        train_rows.append(row)
    del steps, models
    gc.collect()
    malloc_trim()

    if args.memory != 'off':
        for row, (method, compiled) in zip(train_rows, cfgs):
            row.update(memory_row(method, compiled, setting, args, log))
        memory_ratios(train_rows)

    infer_rows = inference_rows(setting, args, x, log) if args.inference else []
    return {'train': train_rows, 'inference': infer_rows}


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--settings', nargs='+', default=None,
                   help='NAME:IMG:BATCH; default resnet50:448:2 resnet18:224:2 on CPU, resnet50:448:32 on CUDA')
    p.add_argument('--methods', nargs='*', default=None, choices=METHODS,
                   help='training configurations to time (none: pass the flag alone, e.g. with --head); default all, '
                        'ggam_unfused only where it differs from ggam (CUDA or --force-fused)')
    p.add_argument('--compile-methods', nargs='*', default=['plain', 'ggam'], choices=COMPILABLE,
                   help='methods also timed under torch.compile(fullgraph=True) (none: pass the flag alone)')
    p.add_argument('--compile-settings', nargs='*', default=None,
                   help='settings where compiled configs run (default: all)')
    p.add_argument('--num-classes', type=int, default=200)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', default='none', choices=tuple(AMP_DTYPES))
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (CPU)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--memory', default='subprocess', choices=('subprocess', 'inprocess', 'off'),
                   help='CPU peak memory per configuration in a fresh subprocess (CUDA is always in process)')
    p.add_argument('--memory-timeout', type=float, default=1800)
    p.add_argument('--update', nargs='+', default=None, choices=('memory', 'grad_check', 'head', 'inference'),
                   help='measure only these parts and merge them into an existing result file (same --name)')
    p.add_argument('--no-inference', dest='inference', action='store_false')
    p.add_argument('--no-grad-check', dest='grad_check', action='store_false')
    p.add_argument('--head', action='store_true', help='time the head + loss alone (eager; compiled as well when '
                   'the setting compiles anything, or with --head-compile)')
    p.add_argument('--head-compile', action='store_true', help='also time the compiled head + loss')
    p.add_argument('--force-fused', action='store_true',
                   help="GGAM heads use fused=True (the fused kernels everywhere; on a CPU set TRITON_INTERPRET=1): "
                        'a dry run of the fused path without a GPU')
    p.add_argument('--sync-check', action='store_true', help='CUDA: check for host syncs with set_sync_debug_mode')
    p.add_argument('--quick', action='store_true', help='CI smoke run: resnet18 @ 64 px, few repeats, no compile')
    p.add_argument('--name', default=None, help='result file stem (default step_time_<device>[_quick])')
    p.add_argument('--out-dir', default=str(Path(__file__).resolve().parent / 'results'))
    p.add_argument('--memory-probe', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    FUSED['ggam'] = True if args.force_fused else 'auto'
    if args.methods is None:
        args.methods = [m for m in METHODS if m != 'ggam_unfused' or fused_differs(args.device)]
    if args.quick:
        args.settings = args.settings or ['resnet18:64:2']
        args.warmup, args.repeats = 1, 3
        args.compile_methods = []
        args.memory = 'inprocess' if args.memory == 'subprocess' else args.memory
    if args.settings is None:
        args.settings = ['resnet50:448:32'] if args.device == 'cuda' else ['resnet50:448:2', 'resnet18:224:2']
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: no CUDA device is available')
    return args



def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = _parse(argv)
    if args.memory_probe:
        memory_probe(json.loads(args.memory_probe))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda':
        torch.backends.cudnn.benchmark = True
    name = args.name or f'step_time_{args.device}' + ('_quick' if args.quick else '')
    if args.update:
        paths = update_result(args, name)
        print('wrote', ', '.join(str(p) for p in paths))
        return {}
    t_start = time.perf_counter()
    settings = [Setting.parse(s) for s in args.settings]
    compile_settings = set(args.compile_settings) if args.compile_settings is not None else None
    train_rows, infer_rows, head_rows, grad_rows, kernel_rows = [], [], [], [], []
    sync = None

    def write() -> List[Path]:
        meta = {
            'machine': machine_info(),
            'command': command_line('step_time', argv),
            'device': args.device, 'amp': args.amp, 'channels_last': args.channels_last,
            'num_classes': args.num_classes, 'warmup': args.warmup, 'repeats': args.repeats, 'memory': args.memory,
            'optimizer': 'SGD momentum 0.9', 'total_s': round(time.perf_counter() - t_start, 1),
            'inference': infer_rows, 'head': head_rows, 'kernels': kernel_rows, 'grad_check': grad_rows,
            'host_sync': sync, 'ggam_head_fused': FUSED['ggam'],
        }
        return write_report(name, args.out_dir, meta, train_rows)

    if args.sync_check:  # first: on a GPU this is the result that must come back
        sync = host_sync_check(settings[0], args.num_classes, args.amp, args.channels_last)
        print('host sync check:', sync)
    for setting in settings:
        run_args = argparse.Namespace(**vars(args))
        if compile_settings is not None and str(setting) not in compile_settings:
            run_args.compile_methods = []
        res = run_setting(setting, run_args)
        train_rows += res['train']
        infer_rows += res['inference']
        write()
        if args.head:
            head_rows += [dict(r, setting=str(setting)) for r in head_benchmark(
                setting, args.num_classes, args.device, args.amp, args.warmup, args.repeats,
                compiled=args.head_compile or bool(run_args.compile_methods), channels_last=args.channels_last)]
            write()
            if fused_differs(args.device):
                kernel_rows += [dict(r, setting=str(setting)) for r in kernel_benchmark(
                    setting, args.num_classes, args.device, args.amp, args.channels_last, args.warmup, args.repeats)]
        write()  # keep what is done if a long run stops
    if args.grad_check:
        gsetting = settings[-1]
        grad_rows = [dict(r, setting=str(gsetting)) for r in gradient_check(gsetting, args.num_classes, args.device)]
        print('gradient check:', grad_rows)
    paths = write()
    print('wrote', ', '.join(str(p) for p in paths))
    return {'train': train_rows, 'inference': infer_rows, 'head': head_rows, 'grad_check': grad_rows, 'sync': sync}



if __name__ == '__main__':
    main()
