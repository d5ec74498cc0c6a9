"""Two models trained the same way: `train_compare` trains GGAM and the plain backbone (or any two of `ARMS`: GGAM,
the SE and CBAM heads of the paper's Table 2, the plain timm model) with the same data, seed and recipe, and
`format_comparison` prints their results side by side (over several seeds: `seeds.py`).

Both are re-exported by `ggam_layers.train`.
"""
import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from .._files import CONFIG_NAME, atomic_write_json
from ..model import ATTENTIONS
from .build import build_datasets, check_classes, scan_data
from .config import TrainConfig
from .distributed import DistInfo, broadcast_object, cleanup_distributed, init_distributed
from .run_dir import claim_output, default_output
from .runner import train
from .stats import percent

__all__ = ['ARMS', 'arm_config', 'arm_name', 'check_arms', 'format_comparison', 'train_compare']

# what a comparison can train: a head attention of `GGAMModel` ('ggam', 'se', 'cbam'), or the plain timm model
ARMS = (*ATTENTIONS, 'plain')
_ARM_TEXT = {'ggam': 'GGAM + {}', 'se': 'SE + {}', 'cbam': 'CBAM + {}', 'plain': 'plain {}'}


def arm_name(arm: str, backbone: Any) -> str:
    """'GGAM + resnet50', 'SE + resnet50', 'plain resnet50': a table's name for an arm."""
    return _ARM_TEXT.get(arm, arm + ' {}').format(backbone)


def check_arms(arms: Sequence[str]) -> Tuple[str, str]:
    """Two distinct names of `ARMS`, or a ValueError naming `--compare` and what it takes."""
    arms = tuple(arms)
    if len(arms) != 2 or len(set(arms)) != 2 or not set(arms) <= set(ARMS):
        raise ValueError(f'--compare (arms) takes two different names of {ARMS}, got {list(arms)}')
    return arms  # type: ignore[return-value]


def arm_config(cfg: TrainConfig, arm: str, output: str) -> TrainConfig:
    """`cfg` training `arm` ('plain': the timm model; else that head attention) into `output`."""
    return dataclasses.replace(cfg, plain=arm == 'plain', attention='ggam' if arm == 'plain' else arm, output=output)


def format_comparison(first: Dict[str, Any], second: Dict[str, Any]) -> str:
    """A side-by-side table of two `train` results (GGAM and plain, or any two arms)."""
    ggam, plain = first, second
    rows = [
        ('test top-1', percent(ggam.get('test_top1')), percent(plain.get('test_top1'))),
        ('test top-5', percent(ggam.get('test_top5')), percent(plain.get('test_top5'))),
        ('train top-1', percent(ggam.get('train_top1')), percent(plain.get('train_top1'))),
        ('epochs', str(ggam.get('epochs_done')), str(plain.get('epochs_done'))),
        ('train time', f'{ggam.get("train_time_s", 0):.0f} s', f'{plain.get("train_time_s", 0):.0f} s'),
    ]
    h1 = arm_name(ggam.get('model', 'ggam'), ggam.get('backbone'))
    h2 = arm_name(plain.get('model', 'plain'), plain.get('backbone'))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(h1), *(len(r[1]) for r in rows))
    w2 = max(len(h2), *(len(r[2]) for r in rows))
    lines = [f'{"":<{w0}}  {h1:>{w1}}  {h2:>{w2}}']
    lines += [f'{a:<{w0}}  {b:>{w1}}  {c:>{w2}}' for a, b, c in rows]
    return '\n'.join(lines)


def train_compare(
        cfg: TrainConfig,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        command: Optional[str] = None,
        arms: Sequence[str] = ('ggam', 'plain'),
) -> Dict[str, Dict[str, Any]]:
    """Train two models with the same data, seed and recipe: GGAM and the plain backbone into OUT/ggam and
    OUT/plain, or the two `arms` into OUT/<arm>.

    The comparison owns OUT from start to end (`run_dir.claim_output`), and each model its own folder.

    Args:
        cfg: The run's `TrainConfig`; its `plain` and `attention` are set per arm, its `output` is the parent.
        train_dataset / eval_dataset: Optional datasets, shared by both models.
        command: The command line, recorded in each run's config.
        arms: Two of `ARMS` ('ggam', 'se', 'cbam', 'plain'), trained in this order.

    Returns:
        {arm: result} (see `train`); rank 0 also writes OUT/comparison.json and prints the table.
    """
    arms = check_arms(arms)
    cfg = cfg.validate()
    t0 = time.perf_counter()
    info = init_distributed(cfg.device)
    try:
        out = Path(broadcast_object(cfg.output or default_output(cfg, '-compare'), info))
        with claim_output(out, info):  # OUT for the whole comparison; each train() locks OUT/ggam, OUT/plain
            return _compare(cfg, out, info, train_dataset, eval_dataset, command, t0, arms)
    finally:
        cleanup_distributed(info)


def _compare(cfg: TrainConfig, out: Path, info: DistInfo, train_dataset: Any, eval_dataset: Any,
             command: Optional[str], t0: float, arms: Tuple[str, str]) -> Dict[str, Dict[str, Any]]:
    if train_dataset is None or eval_dataset is None:
        built = build_datasets(cfg)
        train_dataset = train_dataset if train_dataset is not None else built[0]
        eval_dataset = eval_dataset if eval_dataset is not None else built[1]
    check_classes(cfg, {cfg.train_split: train_dataset, cfg.eval_split: eval_dataset})  # before the scan
    scanned, _ = scan_data(cfg, {'train': train_dataset, 'eval': eval_dataset}, info,
                           cfg.progress and info.is_main)  # once: both models skip the same files
    train_dataset, eval_dataset = scanned['train'], scanned['eval']
    results = {}
    for name in arms:
        sub = arm_config(cfg, name, str(out / name))
        if cfg.resume and not (out / name / CONFIG_NAME).is_file():
            sub = dataclasses.replace(sub, resume=False)  # killed before this model started
        results[name] = train(sub, train_dataset, eval_dataset, command)
    if info.is_main:
        table = format_comparison(results[arms[0]], results[arms[1]])
        atomic_write_json(out / 'comparison.json', {
            k: {m: v for m, v in r.items() if m != 'history'} for k, r in results.items()})
        print(f'\n{table}\n\nruns: {out / arms[0]} and {out / arms[1]} '
              f'({time.perf_counter() - t0:.0f} s in all)', flush=True)
    return results
