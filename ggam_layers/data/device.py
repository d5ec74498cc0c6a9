"""Batches from a uint8 image tensor held on the device, augmented there: a training step bound by the GPU, not PIL.

`DeviceLoader` replaces the DataLoader of `data.loader` for an in-memory image tensor (the synthetic set,
`ggam_layers.data.tensor_cache`). It takes the same sampler and yields the same batches: the run's torchvision
transform is split (`split_transform`) into its deterministic PIL part (resize, centre crop: applied once, when the
tensor is made), its random part (random crop, horizontal flip) and `ToTensor` + `Normalize`. The random part's
parameters are drawn on the CPU from the same per-sample seed (`derive_seed(seed, epoch, index)`) and in the same
order as torchvision draws them, so the device batch equals the DataLoader batch up to float rounding (exactly, on
the CPU); crop and flip are one gather on the device, then the normalisation.
"""
import math
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import Sampler

from .loader import derive_seed

__all__ = ['DATA_PATHS', 'DeviceAugment', 'DeviceLoader', 'device_loaders', 'split_transform', 'wants_device_data']

_PRE_OPS = ('Resize', 'CenterCrop')
_RANDOM_OPS = ('RandomCrop', 'RandomHorizontalFlip')
_TENSOR_OPS = ('ToTensor', 'MaybeToTensor')


def split_transform(transform: Callable) -> Tuple[Optional[Callable], 'DeviceAugment']:
    """Split a torchvision `Compose` into its deterministic PIL part and a `DeviceAugment` for the rest.

    Supported: leading `Resize` / `CenterCrop`, then `RandomCrop` (no padding) and `RandomHorizontalFlip`, then
    `ToTensor` and `Normalize` (the 'flip', 'paper' and 'none' training transforms and every evaluation transform of
    `data.loader.build_transform`).

    Raises:
        ValueError: naming the first transform the device path cannot reproduce (e.g. timm's random resized crop
            and colour jitter: use the DataLoader path for train_aug='timm').
    """
    from torchvision import transforms as T

    ops = list(getattr(transform, 'transforms', [transform]))
    names = [type(op).__name__ for op in ops]
    n_pre = 0
    while n_pre < len(ops) and names[n_pre] in _PRE_OPS:
        n_pre += 1
    n_rand = n_pre
    while n_rand < len(ops) and names[n_rand] in _RANDOM_OPS:
        n_rand += 1
    tail = names[n_rand:]
    if len(tail) != 2 or tail[0] not in _TENSOR_OPS or tail[1] != 'Normalize':
        bad = next((n for n in names[n_rand:] if n not in _TENSOR_OPS + ('Normalize',)), names[n_rand:])
        raise ValueError(f'transform: the device data path reproduces Resize/CenterCrop, RandomCrop, '
                         f'RandomHorizontalFlip, ToTensor, Normalize in that order; got {names} ({bad} is not '
                         f'supported: use the DataLoader path)')
    for op in ops[n_pre:n_rand]:
        if isinstance(op, T.RandomCrop) and (op.padding is not None or op.pad_if_needed):
            raise ValueError('transform: RandomCrop with padding is not supported on the device data path')
    norm = ops[-1]
    pre = T.Compose(ops[:n_pre]) if n_pre else None
    return pre, DeviceAugment(ops[n_pre:n_rand], norm.mean, norm.std)


class DeviceAugment:
    """Random crop, horizontal flip and normalisation of a uint8 batch on its device.

    Args:
        random_ops: torchvision `RandomCrop` / `RandomHorizontalFlip` instances, in the order they are applied.
        mean / std: Normalisation per channel (after scaling to [0, 1]).
    """

    def __init__(self, random_ops: Sequence[Any], mean: Sequence[float], std: Sequence[float]):
        self.random_ops = list(random_ops)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if bool((self.std == 0).any()):
            raise ValueError(f'std must not contain zeros, got {list(std)}')

    def params(self, seed: Optional[int], h: int, w: int) -> Tuple[int, int, int, int, bool]:
        """(top, left, height, width, flip) of one sample, drawn as torchvision draws them under `seeded_rng(seed)`.

        `seed` None means no random draw (an evaluation transform has no random part).
        """
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        top, left, th, tw, flip = 0, 0, h, w, False
        for op in self.random_ops:
            if type(op).__name__ == 'RandomCrop':
                th, tw = op.size
                if h < th or w < tw:
                    raise ValueError(f'RandomCrop size {(th, tw)} is larger than the cached image {(h, w)}')
                if (th, tw) != (h, w):  # torchvision draws nothing for a crop of the whole image
                    top = int(torch.randint(0, h - th + 1, size=(1,), generator=g))
                    left = int(torch.randint(0, w - tw + 1, size=(1,), generator=g))
            else:
                flip = flip != bool(torch.rand(1, generator=g) < op.p)
        return top, left, th, tw, flip

    def __call__(self, images: torch.Tensor, params: Sequence[Tuple[int, int, int, int, bool]]) -> torch.Tensor:
        """Crop, flip and normalise a B x 3 x H x W uint8 batch; one `params` tuple per image."""
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f'images must be a uint8 B x C x H x W tensor, got {images.dtype} {tuple(images.shape)}')
        b, c, h, w = images.shape
        th, tw = params[0][2], params[0][3]
        if (th, tw) != (h, w) or any(p[0] or p[1] or p[4] for p in params):
            dev = images.device
            top = torch.tensor([p[0] for p in params], device=dev)
            left = torch.tensor([p[1] for p in params], device=dev)
            flip = torch.tensor([p[4] for p in params], device=dev)
            r, s = torch.arange(th, device=dev), torch.arange(tw, device=dev)
            rows = top[:, None] + r
            cols = left[:, None] + torch.where(flip[:, None], tw - 1 - s, s)
            images = images.gather(2, rows[:, None, :, None].expand(b, c, th, w))
            images = images.gather(3, cols[:, None, None, :].expand(b, c, th, tw))
        x = images.to(torch.float32).div(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


class DeviceLoader:
    """Batches of a uint8 image tensor, moved to `device` once, augmented there; a drop-in for the DataLoader.

    Args:
        images: N x 3 x H x W uint8 (the deterministic part of the transform already applied).
        targets: N labels.
        batch_size: Images per batch.
        sampler: `EpochSampler` (yields (index, epoch)) or any sampler of indices; `set_epoch` is forwarded.
        augment: The random part and the normalisation (`split_transform`).
        device: Where the images live and the batches are made.
        seed: Run seed; the random draws of sample i in epoch e come from `derive_seed(seed, e, i)`.
        seeded: Draw random parameters (training); False applies only the deterministic part (evaluation).
        drop_last: Drop the last incomplete batch.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, sampler: Sampler,
                 augment: DeviceAugment, device: torch.device, seed: int = 0, seeded: bool = True,
                 drop_last: bool = False):
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f'images and targets differ in length: {images.shape[0]} vs {targets.shape[0]}')
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.targets = targets.to(self.device)
        self.batch_size = batch_size
        self.sampler = sampler
        self.augment = augment
        self.seed = seed
        self.seeded = seeded
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        h, w = self.images.shape[-2:]
        keys = list(self.sampler)
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, len(keys)), self.batch_size):
            chunk = keys[start:start + self.batch_size]
            pairs = [k if isinstance(k, tuple) else (int(k), 0) for k in chunk]
            params = [self.augment.params(derive_seed(self.seed, e, i) if self.seeded else None, h, w)
                      for i, e in pairs]
            idx = torch.tensor([i for i, _ in pairs], device=self.device)
            yield self.augment(self.images[idx], params), self.targets[idx]


DATA_PATHS = ('auto', 'loader', 'device')


def wants_device_data(data_path: str, device: torch.device, dataset: Any, train_transform: Callable) -> bool:
    """Whether a run takes the cached-tensor, on-device path.

    Args:
        data_path: 'auto' (on CUDA, for the synthetic set, when its transform can be reproduced on the device),
            'device' (always; an error where it cannot be) or 'loader' (never: the DataLoader path).
        device: The run's device.
        dataset: The training set.
        train_transform: The run's training transform.
    """
    from .synthetic import SyntheticFineGrained
    from .synthetic_pretrain import SyntheticPretrain

    if data_path not in DATA_PATHS:
        raise ValueError(f'data_path must be one of {DATA_PATHS}, got {data_path!r}')
    if data_path == 'loader':
        return False
    synthetic = isinstance(dataset, (SyntheticFineGrained, SyntheticPretrain))
    if data_path == 'device':
        if not synthetic:
            raise ValueError("data_path='device' needs a built-in synthetic dataset (synthetic, synthetic_pretrain), "
                             f'got {type(dataset).__name__}')
        split_transform(train_transform)  # raises, naming the transform it cannot reproduce
        return True
    if torch.device(device).type != 'cuda' or not synthetic:
        return False
    try:
        split_transform(train_transform)
    except ValueError:
        return False
    return True


def device_loaders(train_ds: Any, eval_ds: Any, train_transform: Callable, eval_transform: Callable,
                   batch_size: int, eval_batch_size: int, sampler: Sampler, eval_sampler: Sampler,
                   device: torch.device, seed: int) -> Tuple[DeviceLoader, DeviceLoader]:
    """Training and evaluation `DeviceLoader`s of the synthetic set (tensors from `data.tensor_cache`)."""
    from .tensor_cache import synthetic_tensors

    pre, augment = split_transform(train_transform)
    images, targets = synthetic_tensors(train_ds, pre)
    train_loader = DeviceLoader(images, targets, batch_size, sampler, augment, device, seed=seed, drop_last=True)
    pre, augment = split_transform(eval_transform)
    images, targets = synthetic_tensors(eval_ds, pre)
    eval_loader = DeviceLoader(images, targets, eval_batch_size, eval_sampler, augment, device, seeded=False)
    return train_loader, eval_loader
