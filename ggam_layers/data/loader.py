"""Data loading whose order and augmentation depend only on (seed, epoch, sample index).

`EpochSampler` draws the permutation of an epoch from (seed, epoch) and gives rank r of W every W-th index, so the
union of the ranks' batches at step t is the single-process batch t of the same global batch size. It yields
`(index, epoch)` pairs, and `SeededTransformDataset` runs the random transform of each sample under an RNG seeded by
(seed, epoch, index): the augmentation of a sample is the same whatever the number of workers or processes, and a
resumed run sees exactly the images an uninterrupted one would.
"""
import math
import random
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ['EpochSampler', 'ShardSampler', 'SeededTransformDataset', 'derive_seed', 'seeded_rng', 'build_transform',
           'build_loader', 'TRAIN_AUGS']

TRAIN_AUGS = ('flip', 'paper', 'timm', 'none')


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*values: int) -> int:
    """A 63-bit seed mixed from non-negative integers (splitmix64), stable across platforms, runs and versions."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ _splitmix64(int(v) & _MASK64))
    return h & ((1 << 63) - 1)


@contextmanager
def seeded_rng(seed: int):
    """Seed torch's CPU generator and Python's `random` inside the block, then restore their previous states.

    These are the generators torchvision's and timm's image transforms draw from; numpy's global generator is left
    alone (saving and restoring it costs more than a flip and a crop).
    """
    torch_state = torch.get_rng_state()
    py_state = random.getstate()
    torch.random.default_generator.manual_seed(seed)  # the CPU generator only (torch.manual_seed seeds CUDA too)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)


class EpochSampler(Sampler):
    """Shuffled (or ordered) indices of one epoch, sharded over ranks; yields `(index, epoch)` pairs.

    The order depends only on (seed, epoch). With W ranks the permutation is padded by repeating its head to a
    multiple of W (as `DistributedSampler` does) and rank r takes positions r, r + W, r + 2W, ...
    """

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {num_samples}')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank must be in [0, world_size={world_size}), got {rank}')
        self.num_samples = num_samples
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 0x5A3))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = len(self) * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        return iter([(i, self.epoch) for i in order[self.rank::self.world_size]])


class ShardSampler(Sampler):
    """Rank r of W takes indices r, r + W, ... in order, without padding (for exact evaluation over ranks)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class SeededTransformDataset(Dataset):
    """Apply a transform to a dataset's images under a per-sample RNG seeded by (seed, epoch, index).

    Args:
        dataset: Returns (PIL image, target) pairs.
        transform: Applied to the image.
        seed: Run seed.
        seeded: Seed the transform's randomness (training); False applies it as is (deterministic eval transforms).
    """

    def __init__(self, dataset: Dataset, transform: Optional[Callable] = None, seed: int = 0, seeded: bool = True):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.seeded = seeded

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[Any, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img, target = self.dataset[index]
        if self.transform is not None:
            if self.seeded:
                with seeded_rng(derive_seed(self.seed, epoch, index)):
                    img = self.transform(img)
            else:
                img = self.transform(img)
        return img, target


def build_transform(
        data_config: Dict[str, Any],
        is_training: bool,
        train_aug: str = 'flip',
        hflip: float = 0.5,
        aa: Optional[str] = None,
        reprob: float = 0.,
        color_jitter: Optional[float] = 0.4,
) -> Callable:
    """The image transform of a run, built with timm's data pipeline.

    Args:
        data_config: timm data config (`input_size`, `interpolation`, `mean`, `std`, `crop_pct`, `crop_mode`), as
            `timm.data.resolve_data_config` returns, with the run's overrides applied.
        is_training: Training transform (random) or evaluation transform (resize, centre crop).
        train_aug: 'flip' (resize to the input size, horizontal flip), 'paper' (resize the whole image to
            input / crop_pct, random crop of the input size, horizontal flip: the recipe of the GGAM paper's code),
            'timm' (timm's training transform: random resized crop, flip, colour jitter or `aa`, random erasing)
            or 'none'.
        hflip: Probability of the horizontal flip.
        aa: timm's auto-augment string ('rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2', 'original', ...); 'timm' only.
        reprob: Random erasing probability; 'timm' only.
        color_jitter: Colour jitter strength (timm turns it off with a RandAugment or AugMix `aa`); 'timm' only.
    """
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as T

    if train_aug not in TRAIN_AUGS:
        raise ValueError(f'train_aug must be one of {TRAIN_AUGS}, got {train_aug!r}')
    if is_training and train_aug != 'timm' and (aa or reprob):
        raise ValueError(f"aa={aa!r} and reprob={reprob!r} are options of timm's training transform: pass "
                         f"train_aug='timm' (--train-aug timm), not {train_aug!r}")
    size = tuple(data_config['input_size'][-2:])
    interp = data_config.get('interpolation', 'bilinear')
    normalize = [T.ToTensor(), T.Normalize(data_config['mean'], data_config['std'])]
    if not is_training or train_aug == 'none':
        if is_training or data_config.get('crop_pct', 1.0) >= 1.0:
            return T.Compose([T.Resize(size, interpolation=str_to_interp_mode(interp))] + normalize)
        return create_transform(
            data_config['input_size'], is_training=False, interpolation=interp, mean=data_config['mean'],
            std=data_config['std'], crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode', 'center'))
    if train_aug == 'timm':
        return create_transform(
            data_config['input_size'], is_training=True, interpolation=interp, mean=data_config['mean'],
            std=data_config['std'], hflip=hflip, auto_augment=aa or None, re_prob=reprob, color_jitter=color_jitter)
    flip = [T.RandomHorizontalFlip(hflip)] if hflip > 0 else []
    if train_aug == 'flip':
        return T.Compose([T.Resize(size, interpolation=str_to_interp_mode(interp))] + flip + normalize)
    crop_pct = data_config.get('crop_pct', 0.875)
    resize = tuple(int(math.floor(s / crop_pct)) for s in size)
    return T.Compose([T.Resize(resize, interpolation=str_to_interp_mode(interp)), T.RandomCrop(size)] + flip
                     + normalize)


def build_loader(
        dataset: Dataset,
        batch_size: int,
        sampler: Sampler,
        num_workers: int = 0,
        drop_last: bool = False,
        pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over `dataset` with the given sampler (workers persist between epochs)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=pin_memory, persistent_workers=num_workers > 0)
