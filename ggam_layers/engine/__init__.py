"""The training engine behind `ggam_layers.train`: crash-safe checkpoints, (seed, epoch)-determined data loading,
DDP helpers and metric files."""
from .checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_safetensors,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from .data import EpochSampler, SeededTransformDataset, ShardSampler, build_transform, derive_seed
from .distributed import DistInfo, all_reduce_sum, init_distributed, replica_max_abs_diff
from .loop import StepOptions, TrainForward, evaluate_model, lr_factor, train_one_epoch
from .metrics import METRIC_COLUMNS, MetricsWriter
from .signals import InterruptGuard, TrainingInterrupted

__all__ = [
    'CheckpointError', 'CheckpointWriteError', 'check_safetensors', 'InterruptGuard', 'TrainingInterrupted',
    'DistInfo', 'EpochSampler', 'METRIC_COLUMNS', 'MetricsWriter', 'SeededTransformDataset', 'ShardSampler',
    'all_reduce_sum', 'atomic_write', 'atomic_write_json', 'atomic_write_text', 'build_transform', 'derive_seed',
    'init_distributed', 'latest_checkpoint', 'list_checkpoints', 'load_checkpoint', 'load_weights',
    'replica_max_abs_diff', 'save_checkpoint', 'save_weights', 'StepOptions', 'TrainForward', 'evaluate_model',
    'lr_factor', 'train_one_epoch',
]
