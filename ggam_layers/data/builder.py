"""Dataset factory for the fine-grained benchmarks (and the built-in synthetic set).

Every dataset returned by :func:`create_dataset` exposes ``num_classes`` and, where known, ``class_names``.
"""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch.utils.data

from .cub import CUB_LAYOUT, Cub2011
from .dogs import DOGS_LAYOUT, StanfordDogs
from .folder import ClassFolders
from .inat import INAT_LAYOUT, INaturalist
from .nabirds import NABIRDS_LAYOUT, NABirds
from .synthetic import SyntheticFineGrained
from .synthetic_pretrain import SyntheticPretrain

__all__ = ['create_dataset', 'list_datasets', 'ClassInfoDataset', 'DATASET_LAYOUTS']

PathLike = Union[str, os.PathLike]

DATASET_LAYOUTS: Dict[str, str] = {
    'synthetic': 'generated in memory, no root',
    'synthetic_pretrain': 'generated in memory, no root (the generic pretraining corpus, docs/pretraining.md)',
    'cub': CUB_LAYOUT,
    'nabirds': NABIRDS_LAYOUT,
    'dogs': DOGS_LAYOUT,
    'inat': INAT_LAYOUT,
    'aircraft': """FGVC-Aircraft layout (torchvision) expected under root:
  fgvc-aircraft-2013b/data/images/<image_id>.jpg
  fgvc-aircraft-2013b/data/variants.txt | families.txt | manufacturers.txt    one class name per line
  fgvc-aircraft-2013b/data/images_<level>_<split>.txt    '<image_id> <class name>' per line
  (level: variant, family, manufacturer; split: train, val, trainval, test)""",
    'cars': """Stanford Cars, either the class-folder layout:
  train/<class_name>/<image>.jpg and test/<class_name>/<image>.jpg
or torchvision's devkit layout (needs scipy):
  stanford_cars/devkit/cars_meta.mat, stanford_cars/devkit/cars_train_annos.mat, stanford_cars/cars_train/*.jpg,
  stanford_cars/cars_test_annos_withlabels.mat, stanford_cars/cars_test/*.jpg""",
    'flowers': """Oxford Flowers-102 layout (torchvision, needs scipy) expected under root:
  flowers-102/jpg/image_00001.jpg ..., flowers-102/imagelabels.mat, flowers-102/setid.mat""",
    'pets': """Oxford-IIIT Pet layout (torchvision) expected under root:
  oxford-iiit-pet/images/<Breed_name>_<n>.jpg
  oxford-iiit-pet/annotations/trainval.txt and test.txt    '<image_id> <class_id> <species> <breed_id>' per line""",
    'folder': """Image folder layout: root/<split>/<class_name>/<image> (split folder synonyms: train/training,
  val/validation/eval, test); pass split='' to use root/<class_name>/<image> directly; hidden files and folders
  (.ipynb_checkpoints, .DS_Store, ...) are ignored""",
}
DATASET_LAYOUTS['imagefolder'] = DATASET_LAYOUTS['folder']

_KNOWN = ('synthetic', 'synthetic_pretrain', 'cub', 'nabirds', 'dogs', 'inat', 'aircraft', 'cars', 'flowers', 'pets',
          'folder', 'imagefolder', 'hfds/<name>')
_ALIASES = {
    'cub200': 'cub',
    'cub2011': 'cub',
    'cub_200_2011': 'cub',
    'fgvc_aircraft': 'aircraft',
    'stanford_cars': 'cars',
    'flowers102': 'flowers',
    'oxford_pets': 'pets',
    'na_birds': 'nabirds',
    'stanford_dogs': 'dogs',
    'inaturalist': 'inat',
    'image_folder': 'folder',
    'imagefolder': 'folder',
}
_VAL_SYNONYMS = ('val', 'valid', 'validation', 'eval', 'evaluation')
_SPLIT_FOLDER_SYNONYMS = {
    'train': ('train', 'training'),
    'val': ('val', 'valid', 'validation', 'eval', 'evaluation'),
    'test': ('test', 'testing'),
}


def list_datasets() -> List[str]:
    """Names accepted by :func:`create_dataset`."""
    return list(_KNOWN)


def _map_split(name: str, split: str, allowed: Sequence[str], mapping: Optional[Dict[str, str]] = None) -> str:
    split = mapping.get(split, split) if mapping else split
    if split not in allowed:
        raise ValueError(f"split for dataset '{name}' must be one of {tuple(allowed)}, got {split!r}")
    return split


def _require_root(name: str, root: Optional[PathLike]) -> str:
    if root is None or os.fspath(root) == '':
        raise ValueError(
            f"root is required for dataset '{name}' (the folder holding the data).\n{DATASET_LAYOUTS[name]}"
        )
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: root '{root}' is not a directory.\n{DATASET_LAYOUTS[name]}")
    return root


def _strip_base(root: str, base: str) -> str:
    """Let users point root at the dataset's own folder (e.g. .../fgvc-aircraft-2013b) as well as its parent."""
    if os.path.basename(os.path.normpath(root)) == base and not os.path.isdir(os.path.join(root, base)):
        return os.path.dirname(os.path.normpath(root))
    return root


def _check_paths(name: str, paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name}: missing '{path}'.\n{DATASET_LAYOUTS[name]}")


def _attach(ds: Any, class_names: Optional[Sequence[str]], num_classes: Optional[int] = None) -> Any:
    """Attach ``num_classes`` and ``class_names`` to a dataset (wrapping it when attributes cannot be set)."""
    names = list(class_names) if class_names is not None else None
    n = num_classes if num_classes is not None else (len(names) if names is not None else None)
    try:
        ds.num_classes = n
        ds.class_names = names
    except AttributeError:
        ds = ClassInfoDataset(ds, n, names)
    return ds


class ClassInfoDataset(torch.utils.data.Dataset):
    """Thin wrapper adding ``num_classes`` and ``class_names`` to a dataset; other attributes pass through.

    Args:
        dataset: Wrapped dataset.
        num_classes: Number of classes.
        class_names: Class names in label order, or None when unknown.
    """

    def __init__(self, dataset: Any, num_classes: Optional[int], class_names: Optional[List[str]]) -> None:
        self.dataset = dataset
        self.num_classes = num_classes
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getattr__(self, item: str) -> Any:
        if item == 'dataset':
            raise AttributeError(item)
        return getattr(self.dataset, item)


def _torchvision_call(name: str, fn: Callable[[], Any], root: str) -> Any:
    """Call a torchvision dataset constructor, turning its RuntimeErrors into clear errors."""
    try:
        return fn()
    except RuntimeError as e:
        msg = str(e)
        if 'scipy' in msg.lower():
            raise ImportError(
                f'{name}: torchvision needs scipy to read the .mat annotation files: pip install scipy'
            ) from e
        if 'not found' in msg.lower() or 'corrupted' in msg.lower():
            raise FileNotFoundError(
                f"{name}: torchvision could not find a valid dataset under '{root}' ({msg}).\n{DATASET_LAYOUTS[name]}"
            ) from e
        raise


def _image_folder(name: str, root: str, split: Optional[str], transform: Optional[Callable], **kwargs: Any) -> Any:
    folder = root
    if split:
        candidates: Tuple[str, ...] = (split,)
        for synonyms in _SPLIT_FOLDER_SYNONYMS.values():
            if split in synonyms:
                candidates = (split,) + tuple(s for s in synonyms if s != split)
        for c in candidates:
            if os.path.isdir(os.path.join(root, c)):
                folder = os.path.join(root, c)
                break
        else:
            tried = ', '.join(os.path.join(root, c) for c in candidates)
            raise FileNotFoundError(f"{name}: no folder for split '{split}' (tried {tried}).\n{DATASET_LAYOUTS[name]}")
    try:
        ds = ClassFolders(folder, name, transform=transform, **kwargs)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{name}: '{folder}' holds no class folders with images ({e}).\n{DATASET_LAYOUTS[name]}"
        ) from e
    return _attach(ds, ds.classes)


def _utf8_lines(path: str) -> List[Tuple[int, str]]:
    with open(path, 'rb') as f:
        raw = f.read()
    out = []
    for lineno, data in enumerate(raw.split(b'\n'), 1):
        try:
            out.append((lineno, data.decode('utf-8').rstrip('\r')))
        except UnicodeDecodeError as e:
            raise ValueError(f"'{path}', line {lineno}: not UTF-8 text ({e.reason} at byte {e.start}); the file is "
                             'damaged: restore it from the dataset archive') from None
    return out


def _check_aircraft_list(list_file: str, classes_file: str, images: str) -> None:
    """Check an FGVC-Aircraft list ('<image_id> <class name>' per line) before torchvision reads it, so that a bad line
    is named by file and line number."""
    classes = {line.strip() for _, line in _utf8_lines(classes_file) if line.strip()}
    lines = _utf8_lines(list_file)
    if lines and not lines[-1][1]:
        lines = lines[:-1]  # the end of the last line
    for lineno, line in lines:
        image_id, sep, label = line.strip().partition(' ')  # as torchvision splits it
        if not sep or not label:
            raise ValueError(f"'{list_file}', line {lineno}: expected '<image_id> <class name>', got {line!r}")
        if label not in classes:
            raise ValueError(f"'{list_file}', line {lineno}: class {label!r} is not listed in '{classes_file}'")
        if os.sep in image_id or '/' in image_id or not os.path.isfile(os.path.join(images, f'{image_id}.jpg')):
            raise FileNotFoundError(f"'{list_file}', line {lineno}: image '{os.path.join(images, image_id)}.jpg' is "
                                    'missing')


def _check_pets_list(list_file: str) -> None:
    """Check an Oxford-IIIT Pet list ('<image_id> <class_id> <species> <breed_id>' per line) the way torchvision
    parses it, so that a bad line is named by file and line number."""
    lines = _utf8_lines(list_file)
    if lines and not lines[-1][1]:
        lines = lines[:-1]  # the end of the last line
    for lineno, line in lines:
        fields = line.split()
        if len(fields) != 4 or not all(f.isascii() and f.isdigit() and int(f) >= 1 for f in fields[1:3]):
            raise ValueError(f"'{list_file}', line {lineno}: expected '<image_id> <class_id> <species 1|2> "
                             f"<breed_id>' with ids >= 1, got {line!r}")


def create_dataset(
    name: str = 'synthetic',
    root: Optional[PathLike] = None,
    split: str = 'train',
    transform: Optional[Callable] = None,
    **kwargs: Any,
) -> torch.utils.data.Dataset:
    """Create a classification dataset by name.

    Args:
        name: One of 'synthetic' (default, no root), 'synthetic_pretrain' (no root), 'cub', 'aircraft', 'cars',
            'flowers', 'pets', 'folder' / 'imagefolder', or 'hfds/<hugging face name>' (passed to
            ``timm.data.create_dataset``).
        root: Data folder (see ``DATASET_LAYOUTS``); unused for 'synthetic'.
        split: Split name. Datasets without a val split ('cub', 'nabirds', 'dogs', 'cars') map 'val' / 'validation'
            to 'test'; 'pets' maps 'train' to 'trainval' and 'val' to 'test'; 'aircraft' accepts train, val,
            trainval, test; 'inat' accepts train, train_mini (2021), val, and reads val for 'test' (the iNaturalist
            test sets have no labels).
        transform: Transform applied to each PIL image.
        **kwargs: Passed to the underlying dataset, e.g. ``annotation_level`` ('variant', 'family',
            'manufacturer') for 'aircraft', ``version`` ('2017', '2018', '2019', '2021') for 'inat', or
            ``num_classes`` / ``difficulty`` / ``seed`` for 'synthetic'. The readers of 'cub', 'nabirds', 'dogs' and
            'inat' take ``check_files`` (check at construction that every listed image exists; default True).

    Returns:
        A map-style dataset yielding (image, label) with ``num_classes`` and ``class_names`` attributes.

    Raises:
        ValueError: Unknown name or split, or missing root.
        FileNotFoundError: The data layout is incomplete; the message names the missing path and the layout.
    """
    if not isinstance(name, str):
        raise TypeError(f'name must be a str, got {type(name).__name__}')
    raw_name = name
    prefix, sep, rest = name.partition('/')
    if sep and prefix.lower() == 'hfds':
        import timm.data

        ds = timm.data.create_dataset(
            f'hfds/{rest}', root=None if root is None else os.fspath(root), split=split, **kwargs
        )
        ds.transform = transform
        class_to_idx = getattr(getattr(ds, 'reader', None), 'class_to_idx', None) or {}
        names = [n for n, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])] or None
        return _attach(ds, names)

    name = name.lower().replace('-', '_') if name else 'synthetic'
    name = _ALIASES.get(name, name)
    if name not in DATASET_LAYOUTS:
        raise ValueError(f'Unknown dataset {raw_name!r}; known names: {", ".join(_KNOWN)}')
    val_to_test = {s: 'test' for s in _VAL_SYNONYMS}

    if name == 'synthetic':
        split = _map_split(name, split, ('train', 'val', 'test'), {s: 'val' for s in _VAL_SYNONYMS})
        return SyntheticFineGrained(split=split, transform=transform, **kwargs)
    if name == 'synthetic_pretrain':
        split = _map_split(name, split, ('train', 'val', 'test'), {s: 'val' for s in _VAL_SYNONYMS})
        return SyntheticPretrain(split=split, transform=transform, **kwargs)

    root = _require_root(name, root)
    if name == 'cub':
        split = _map_split(name, split, ('train', 'test'), val_to_test)
        return Cub2011(root, split=split, transform=transform, **kwargs)
    if name in ('nabirds', 'dogs'):
        split = _map_split(name, split, ('train', 'test'), val_to_test)
        return (NABirds if name == 'nabirds' else StanfordDogs)(root, split=split, transform=transform, **kwargs)
    if name == 'inat':  # the test sets have no labels: 'test' reads val, as papers report
        split = _map_split(name, split, ('train', 'train_mini', 'val'), {s: 'val' for s in ('test',) + _VAL_SYNONYMS})
        return INaturalist(root, split=split, transform=transform, **kwargs)

    if name == 'folder':
        return _image_folder(name, root, split, transform, **kwargs)

    if name == 'aircraft':
        from torchvision.datasets import FGVCAircraft

        split = _map_split(name, split, ('train', 'val', 'trainval', 'test'), {s: 'val' for s in _VAL_SYNONYMS})
        level = kwargs.pop('annotation_level', 'variant')
        levels = {'variant': 'variants.txt', 'family': 'families.txt', 'manufacturer': 'manufacturers.txt'}
        if level not in levels:
            raise ValueError(f'annotation_level must be one of {tuple(levels)}, got {level!r}')
        root = _strip_base(root, 'fgvc-aircraft-2013b')
        data = os.path.join(root, 'fgvc-aircraft-2013b', 'data')
        _check_paths(
            name,
            [
                os.path.join(data, levels[level]),
                os.path.join(data, f'images_{level}_{split}.txt'),
                os.path.join(data, 'images'),
            ],
        )
        _check_aircraft_list(os.path.join(data, f'images_{level}_{split}.txt'), os.path.join(data, levels[level]),
                             os.path.join(data, 'images'))
        ds = _torchvision_call(
            name,
            lambda: FGVCAircraft(
                root, split=split, annotation_level=level, transform=transform, download=False, **kwargs
            ),
            root,
        )
        missing = next((f for f in ds._image_files if not os.path.isfile(f)), None)
        if missing is not None:
            raise FileNotFoundError(f"{name}: image '{missing}' listed in images_{level}_{split}.txt is missing")
        return _attach(ds, ds.classes)

    if name == 'cars':
        split = _map_split(name, split, ('train', 'test'), val_to_test)
        root = _strip_base(root, 'stanford_cars')
        base = os.path.join(root, 'stanford_cars')
        if os.path.isdir(os.path.join(root, 'train')) or os.path.isdir(os.path.join(root, 'test')):
            return _image_folder(name, root, split, transform, **kwargs)
        from torchvision.datasets import StanfordCars

        if split == 'train':
            need = ['devkit/cars_meta.mat', 'devkit/cars_train_annos.mat', 'cars_train']
        else:
            need = ['devkit/cars_meta.mat', 'cars_test_annos_withlabels.mat', 'cars_test']
        _check_paths(name, [os.path.join(base, p) for p in need])
        ds = _torchvision_call(
            name, lambda: StanfordCars(root, split=split, transform=transform, download=False, **kwargs), root
        )
        return _attach(ds, ds.classes)

    if name == 'flowers':
        from torchvision.datasets import Flowers102

        split = _map_split(name, split, ('train', 'val', 'test'), {s: 'val' for s in _VAL_SYNONYMS})
        root = _strip_base(root, 'flowers-102')
        base = os.path.join(root, 'flowers-102')
        _check_paths(name, [os.path.join(base, p) for p in ('jpg', 'imagelabels.mat', 'setid.mat')])
        ds = _torchvision_call(
            name, lambda: Flowers102(root, split=split, transform=transform, download=False, **kwargs), root
        )
        return _attach(ds, ds.classes)

    # pets
    from torchvision.datasets import OxfordIIITPet

    split = _map_split(name, split, ('trainval', 'test'), {'train': 'trainval', **val_to_test})
    root = _strip_base(root, 'oxford-iiit-pet')
    base = os.path.join(root, 'oxford-iiit-pet')
    _check_paths(name, [os.path.join(base, 'images'), os.path.join(base, 'annotations', f'{split}.txt')])
    _check_pets_list(os.path.join(base, 'annotations', f'{split}.txt'))
    ds = _torchvision_call(
        name, lambda: OxfordIIITPet(root, split=split, transform=transform, download=False, **kwargs), root
    )
    missing = next(((i, str(f)) for i, f in enumerate(ds._images) if not os.path.isfile(f)), None)
    if missing is not None:  # every line is an image (_check_pets_list refused blank ones)
        raise FileNotFoundError(f"{name}: image '{missing[1]}' listed in annotations/{split}.txt, line "
                                f'{missing[0] + 1}, is missing')
    return _attach(ds, ds.classes, max(len(ds.classes), max(ds._labels, default=-1) + 1))
