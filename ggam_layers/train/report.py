"""The evaluation report fine-grained papers give: per-class accuracy and the confusion matrix, as CSV files (and a
PNG of the matrix with the `viz` extra), from an `evaluate_model` result."""
import csv
import io
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .._files import atomic_write_text

__all__ = ['PER_CLASS_NAME', 'CONFUSION_NAME', 'CONFUSION_PNG', 'write_report']

PER_CLASS_NAME = 'per_class.csv'
CONFUSION_NAME = 'confusion.csv'
CONFUSION_PNG = 'confusion.png'

_logger = logging.getLogger(__name__)


def _names(class_names: Optional[Sequence[str]], k: int) -> List[str]:
    return [str(n) for n in class_names] if class_names is not None and len(class_names) == k else [
        str(i) for i in range(k)]


def write_report(res: Dict[str, Any], out_dir: Path, class_names: Optional[Sequence[str]] = None,
                 png: bool = True) -> List[Path]:
    """Write `per_class.csv` (index, name, images, top-1) and `confusion.csv` (rows: true class, columns: predicted),
    and `confusion.png` when matplotlib is installed and `png` is set; returns the files written.

    Args:
        res: An `evaluate_model` result.
        out_dir: Folder for the files (created).
        class_names: Names in classifier order (indices otherwise).
        png: Also draw the confusion matrix.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc, count = res['per_class_top1'], res['per_class_count']
    names = _names(class_names, len(acc))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(['class', 'name', 'images', 'top1'])
    w.writerows([i, names[i], count[i], '' if a is None else f'{a:.6f}'] for i, a in enumerate(acc))
    written = [atomic_write_text(out_dir / PER_CLASS_NAME, buf.getvalue())]
    confusion = res.get('confusion')
    if confusion is not None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator='\n')
        w.writerow(['true \\ predicted', *names])
        w.writerows([names[i], *row] for i, row in enumerate(confusion))
        written.append(atomic_write_text(out_dir / CONFUSION_NAME, buf.getvalue()))
        if png:
            try:
                from ..viz import plot_confusion
            except ImportError:  # matplotlib (the viz extra) is missing: the CSV files are the report
                _logger.info('confusion.png needs matplotlib: pip install "ggam-layers[viz]"')
            else:
                written.append(plot_confusion(confusion, names, out_dir / CONFUSION_PNG))
    return written
