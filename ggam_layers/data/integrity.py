"""Unreadable images in a file-backed dataset: find them once, skip them with a warning, or stop.

Scraped fine-grained datasets ship a few files that are not images, or are cut short. `scan_images` decodes every
file of a dataset once (JPEGs at 1/8 scale, which still reads the whole compressed stream and so finds truncation),
and returns the dataset without the bad files, as timm's readers do at load time: each is named in a warning and
counted. `strict=True` stops at the first bad file instead, and more than `max_bad_fraction` bad files stop the run:
that is a broken copy of the dataset, not noise. The readers of `create_dataset` (CUB, Aircraft, Cars, Flowers,
Pets, folder) all expose their files; datasets without files (synthetic, hfds/) are returned unchanged.
"""
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch.utils.data
from PIL import Image, UnidentifiedImageError

__all__ = ['BadSample', 'ScanReport', 'SkipBadSamples', 'check_image', 'sample_paths', 'scan_images']

_logger = logging.getLogger(__name__)
_MAX_WARNINGS = 20  # name this many bad files one by one, then summarise


@dataclass(frozen=True)
class BadSample:
    """A file that could not be read: its dataset index, path and the reason."""
    index: int
    path: str
    reason: str


@dataclass
class ScanReport:
    """What `scan_images` found: the number of files checked and the bad ones."""
    total: int = 0
    bad: List[BadSample] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.bad)


def sample_paths(dataset: Any) -> Optional[List[str]]:
    """The image file of every sample of a dataset built by `create_dataset`, in index order, or None (no files)."""
    if isinstance(dataset, SkipBadSamples):
        return [dataset.paths[i] for i in dataset.keep]
    ds = dataset
    attrs = ('samples', '_samples', '_image_files', '_images')
    while not any(hasattr(ds, a) for a in attrs) and hasattr(ds, 'dataset'):
        ds = ds.dataset  # ClassInfoDataset and similar wrappers
    for attr in ('samples', '_samples'):  # ImageFolder, Cub2011, StanfordCars: (path, target) pairs
        items = getattr(ds, attr, None)
        if isinstance(items, list) and items and isinstance(items[0], (tuple, list)):
            return [os.fspath(p) for p, *_ in items]
    for attr in ('_image_files', '_images'):  # FGVCAircraft, Flowers102, OxfordIIITPet
        items = getattr(ds, attr, None)
        if isinstance(items, list):
            return [os.fspath(p) for p in items]
    return None


def check_image(path: str) -> Optional[str]:
    """Decode `path` the way the readers do; None when it is a usable image, else what is wrong with it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # PIL's DecompressionBombWarning, EXIF warnings
            with Image.open(path) as img:
                if img.format == 'JPEG':
                    img.draft('RGB', (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                img.convert('RGB')
    except UnidentifiedImageError:
        return 'not an image file PIL can read'
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, MemoryError) as e:
        text = str(e) or type(e).__name__
        if 'truncated' in text.lower():
            return f'truncated ({text})'
        return text
    return None


class SkipBadSamples(torch.utils.data.Dataset):
    """A dataset without the samples `scan_images` found unreadable; `num_classes` and `class_names` pass through.

    Args:
        dataset: The reader.
        keep: Indices of `dataset` to keep, in order.
        paths: The file of every sample of `dataset` (to name a file that fails later).
        report: The scan.
    """

    def __init__(self, dataset: Any, keep: Sequence[int], paths: Sequence[str], report: ScanReport) -> None:
        self.dataset = dataset
        self.keep = list(keep)
        self.paths = list(paths)
        self.report = report

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        i = self.keep[index]
        try:
            return self.dataset[i]
        except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise RuntimeError(f'image {self.paths[i]} could not be read ({e}), although it could at the start of the '
                               'run: was it changed or removed during training?') from e

    def __getattr__(self, item: str) -> Any:
        if item in ('dataset', 'keep', 'paths', 'report'):
            raise AttributeError(item)
        return getattr(self.dataset, item)

    @property
    def targets(self) -> Optional[List[int]]:
        targets = getattr(self.dataset, 'targets', None) or getattr(self.dataset, '_labels', None)
        return None if targets is None else [targets[i] for i in self.keep]


def scan_images(
        dataset: Any,
        strict: bool = False,
        max_bad_fraction: float = 0.05,
        name: str = 'dataset',
        progress: Optional[Callable[[Sequence[int]], Any]] = None,
        log: bool = True,
) -> Tuple[Any, ScanReport]:
    """Check every image of `dataset` once; return it without the unreadable ones, and what was found.

    Args:
        dataset: A dataset of `create_dataset` (or anything `sample_paths` understands).
        strict: Raise at the first bad file instead of skipping it.
        max_bad_fraction: Raise when more than this fraction of the files is bad.
        name: How messages name the dataset ('cub train', ...).
        progress: Wraps the index range (e.g. a tqdm).
        log: Name each skipped file in a warning (rank 0 of a DDP job logs, the others stay quiet).

    Returns:
        (`dataset` itself when every file is good or it has no files, else a `SkipBadSamples`), the `ScanReport`.

    Raises:
        ValueError: `strict` and a bad file, or more than `max_bad_fraction` bad files, or no usable file at all.
    """
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f'max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}')
    if isinstance(dataset, SkipBadSamples):  # scanned already (train_compare scans once for both models)
        return dataset, dataset.report
    paths = sample_paths(dataset)
    report = ScanReport(total=0 if paths is None else len(paths))
    if not paths:
        return dataset, report
    indices = range(len(paths))
    for i in (progress(indices) if progress is not None else indices):
        reason = check_image(paths[i])
        if reason is None:
            continue
        if strict:
            raise ValueError(f'{name}: image {paths[i]} is unreadable ({reason}); --strict-data (strict_data=True) '
                             'stops at the first bad file: remove or replace it, or run without --strict-data to '
                             'skip such files')
        report.bad.append(BadSample(i, paths[i], reason))
        if log and len(report.bad) <= _MAX_WARNINGS:
            _logger.warning('%s: skipping unreadable image %s (%s)', name, paths[i], reason)
    n_bad = report.skipped
    if n_bad > max_bad_fraction * report.total or n_bad == report.total:
        first = report.bad[0]
        raise ValueError(
            f'{name}: {n_bad} of {report.total} images ({100 * n_bad / report.total:.1f}%) are unreadable, more than '
            f'max_bad_fraction={max_bad_fraction:g}: the dataset looks broken, not merely noisy (first: {first.path}: '
            f'{first.reason}). Check the download or extraction; to train anyway, raise --max-bad-fraction')
    if not n_bad:
        return dataset, report
    if log and n_bad > _MAX_WARNINGS:
        _logger.warning('%s: %d more unreadable images skipped (%d in all; results.json lists them)', name,
                        n_bad - _MAX_WARNINGS, n_bad)
    bad = {b.index for b in report.bad}
    return SkipBadSamples(dataset, [i for i in range(len(paths)) if i not in bad], paths, report), report
