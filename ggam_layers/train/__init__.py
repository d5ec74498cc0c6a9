"""The training application: train and evaluate GGAM models, and the plain timm backbone as the baseline.

Python::

    from ggam_layers.train import TrainConfig, train, evaluate
    cfg = TrainConfig.from_preset('synthetic', output='runs/ggam', lam=1.0)
    result = train(cfg)                       # dict of final metrics (test_top1, test_top5, ...)
    evaluate('runs/ggam')['top1'] == result['test_top1']

Command line (`ggam-layers train --help`)::

    ggam-layers train --compare-plain                    # GGAM and the plain backbone on the synthetic set
    ggam-layers train --preset paper --data-root CUB_200_2011 --output runs/cub
    torchrun --nproc-per-node 4 -m ggam_layers train --preset paper --data-root CUB_200_2011
    ggam-layers eval --checkpoint runs/cub

A run directory holds `config.json` (timm model config; the run's settings under `ggam_layers`), the latest
`model.safetensors`, `metrics.csv` / `metrics.jsonl` (one row per epoch), `results.json` (final metrics) and
`checkpoints/epoch-NNNN/` (weights + optimizer, schedule and RNG state) for `--resume`. The data order and every
random augmentation depend only on (seed, epoch, sample index), so a resumed run ends with the same weights as an
uninterrupted one, and `--batch-size` is the global batch whatever the number of processes.

The modules, bottom to top (each imports only those below it): `progress`, `signals`, `distributed`, `metrics`,
`checkpoint`, `loop` (one epoch, evaluation), `options` (`option()`, how a config field is declared), `config`
(`TrainConfig`, presets), `run_dir`, `build` (datasets, model, optimizer, config.json), `evaluate`, `runner` (`train`),
`compare` (GGAM against plain), `stats`, `seeds` (over seeds), `cli` (the `train` and `eval` subcommands) and
`options_doc` (docs/options.md). This file is the facade.
"""
from .build import build_datasets, build_model, resolve_data_config
from .cli import add_train_args, compare_requested, config_from_args, register_cli
from .compare import format_comparison, train_compare
from .config import AMP_DTYPES, CAM_CLASSES, OPTIMIZERS, PRESETS, RESUME_MUTABLE_FIELDS, SCHEDULES, TrainConfig
from .evaluate import evaluate
from .loop import evaluate_model, lr_factor
from .run_dir import RESULTS_NAME
from .runner import train
from .seeds import format_seed_summary, seed_summary, train_compare_seeds

__all__ = [
    'TrainConfig', 'PRESETS', 'RESUME_MUTABLE_FIELDS', 'train', 'train_compare', 'train_compare_seeds', 'evaluate',
    'evaluate_model', 'build_model', 'build_datasets', 'resolve_data_config', 'lr_factor', 'register_cli',
    'format_comparison', 'seed_summary', 'format_seed_summary', 'add_train_args', 'config_from_args',
    'compare_requested', 'OPTIMIZERS', 'SCHEDULES', 'AMP_DTYPES', 'CAM_CLASSES', 'RESULTS_NAME',
]
