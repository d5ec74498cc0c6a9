"""The synthetic set as one uint8 tensor, generated once and cached on disk.

A GPU trains on 64 px to 224 px synthetic images far faster than PIL renders and transforms them in DataLoader
workers (about 600 images/s a process), so the fast path renders every image once, applies the deterministic
leading part of the run's transform (the resize, and the centre crop of evaluation) with PIL exactly as the
DataLoader path would, and keeps the result as an N x 3 x H x W uint8 tensor. The random part (crop, flip) and the
normalisation then run on the device (`ggam_layers.data.device`).

The cache file is keyed by every generator parameter, the md5 of the generator's source and the deterministic
transform, so changing any of them makes a new file; files are written atomically (a temporary file, then a
rename) in safetensors format.
"""
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

from .synthetic import SyntheticFineGrained
from .synthetic_pretrain import SyntheticPretrain, pretrain_generator_params

__all__ = ['GENERATOR_PARAMS', 'default_cache_dir', 'generator_params', 'cache_key', 'synthetic_tensors']

# the SyntheticFineGrained attributes that decide its images (transforms and the in-memory cache do not)
GENERATOR_PARAMS = ('split', 'num_classes', 'samples_per_class', 'image_size', 'seed', 'difficulty',
                    'num_distractors', 'occlusion_prob', 'part_scale')


def default_cache_dir() -> Path:
    """`$GGAM_CACHE_DIR`, else `$XDG_CACHE_HOME/ggam_layers/tensors` (`~/.cache/ggam_layers/tensors`)."""
    if os.environ.get('GGAM_CACHE_DIR'):
        return Path(os.environ['GGAM_CACHE_DIR'])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'ggam_layers' / 'tensors'


def generator_params(ds: Union[SyntheticFineGrained, SyntheticPretrain]) -> Dict[str, Any]:
    """Every parameter that decides the images of `ds`, plus the md5 of the generator's source file (for the
    pretraining corpus: `synthetic_pretrain.pretrain_generator_params`)."""
    if isinstance(ds, SyntheticPretrain):
        return pretrain_generator_params(ds)
    if not isinstance(ds, SyntheticFineGrained):
        raise TypeError(f'ds must be a SyntheticFineGrained or a SyntheticPretrain, got {type(ds).__name__}')
    params: Dict[str, Any] = {k: getattr(ds, k) for k in GENERATOR_PARAMS}
    source = Path(sys.modules[SyntheticFineGrained.__module__].__file__)
    params['generator_md5'] = hashlib.md5(source.read_bytes()).hexdigest()
    return params


def cache_key(ds: SyntheticFineGrained, pre_transform: Optional[Callable] = None) -> str:
    """A hex digest of the generator parameters and the deterministic transform (its repr)."""
    return _key(generator_params(ds), pre_transform)


def _key(params: Dict[str, Any], pre_transform: Optional[Callable]) -> str:
    desc = {'generator': params, 'pre_transform': repr(pre_transform) if pre_transform else None}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


def _render(ds: SyntheticFineGrained, pre_transform: Optional[Callable]) -> torch.Tensor:
    from PIL import Image

    images = []
    for i in range(len(ds)):
        img = Image.fromarray(ds.generate(i)[0])
        if pre_transform is not None:
            img = pre_transform(img)
        images.append(np.asarray(img.convert('RGB'), dtype=np.uint8))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def synthetic_tensors(
        ds: SyntheticFineGrained,
        pre_transform: Optional[Callable] = None,
        cache_dir: Union[str, Path, None] = None,
        use_cache: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The images of `ds` as an N x 3 x H x W uint8 tensor and its labels, from the disk cache when present.

    Args:
        ds: The synthetic dataset (its own `transform` is ignored).
        pre_transform: The deterministic PIL part of the run's transform (resize, centre crop), or None.
        cache_dir: Folder of the cache files (default `default_cache_dir()`).
        use_cache: Read and write the cache; False renders in memory only.

    Returns:
        (images, targets): uint8 N x 3 x H x W and int64 N, on the CPU.
    """
    from safetensors.torch import load_file, save_file

    targets = torch.tensor(ds.targets, dtype=torch.int64)
    if not use_cache:
        return _render(ds, pre_transform), targets
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    params = generator_params(ds)
    path = folder / f'synthetic-{_key(params, pre_transform)}.safetensors'
    if path.is_file():
        try:
            stored = load_file(str(path))
            if stored['images'].shape[0] == len(ds) and torch.equal(stored['targets'], targets):
                return stored['images'], targets
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    images = _render(ds, pre_transform)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    meta = {'generator': json.dumps(params, sort_keys=True), 'pre_transform': repr(pre_transform)}
    try:
        save_file({'images': images, 'targets': targets}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return images, targets
