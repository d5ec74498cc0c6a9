"""Per-epoch metrics: `metrics.csv` and `metrics.jsonl` rewritten atomically from the run's history, optional
TensorBoard scalars."""
import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List

from .._files import atomic_write_text

__all__ = ['METRIC_COLUMNS', 'MetricsWriter', 'read_jsonl']

METRIC_COLUMNS = (
    'epoch', 'train_loss', 'train_ce', 'train_ggam', 'train_top1', 'test_loss', 'test_top1', 'test_top5',
    'lr_backbone', 'lr_head', 'skipped_steps', 'images_per_s', 'epoch_time_s', 'eval_time_s',
)


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsWriter:
    """Writes the whole history each epoch, so the files always match the newest checkpoint (also after resume).

    Args:
        out_dir: Run directory.
        tensorboard: Also log scalars to `OUT/tensorboard` (imports `torch.utils.tensorboard` lazily).
    """

    def __init__(self, out_dir: str, tensorboard: bool = False):
        self.out_dir = Path(out_dir)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    '--tensorboard needs the tensorboard package: pip install "ggam-layers[train]"') from e
            self._tb = SummaryWriter(log_dir=str(self.out_dir / 'tensorboard'))

    def write(self, history: List[Dict[str, Any]]) -> None:
        """Rewrite `metrics.csv` and `metrics.jsonl` from `history` and log its last row to TensorBoard."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(METRIC_COLUMNS), extrasaction='ignore', lineterminator='\n')
        writer.writeheader()
        for row in history:
            writer.writerow({k: ('' if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})
        atomic_write_text(self.out_dir / 'metrics.csv', buf.getvalue())
        lines = ''.join(json.dumps({k: _clean(v) for k, v in row.items()}) + '\n' for row in history)
        atomic_write_text(self.out_dir / 'metrics.jsonl', lines)
        if self._tb is not None and history:
            row = history[-1]
            for k, v in row.items():
                if k != 'epoch' and isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self._tb.add_scalar(k, v, row['epoch'])
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Rows of a `metrics.jsonl` file."""
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]
