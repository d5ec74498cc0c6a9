"""CUB-200-2011 reader for the dataset's native layout."""

import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch.utils.data
from PIL import Image

__all__ = ['Cub2011', 'CUB_LAYOUT']

CUB_LAYOUT = """CUB-200-2011 layout expected under root (root may also be the folder holding CUB_200_2011/):
  images.txt               '<image_id> <relative/path.jpg>' per line
  image_class_labels.txt   '<image_id> <class_id>' per line (class ids start at 1)
  train_test_split.txt     '<image_id> <1 = train, 0 = test>' per line
  classes.txt              '<class_id> <class_name>' per line
  images/                  '<class_name>/<file>.jpg' image files"""

_REQUIRED = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt', 'images')


def _read_lines(path: str) -> List[Tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a UTF-8 index file; undecodable bytes name the line."""
    with open(path, 'rb') as f:
        raw = f.read()
    out = []
    for lineno, data in enumerate(raw.split(b'\n'), 1):
        try:
            line = data.decode('utf-8').strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"'{path}', line {lineno}: not UTF-8 text ({e.reason} at byte {e.start}); the file is "
                             'damaged: restore it from the dataset archive') from None
        if line:
            out.append((lineno, line))
    return out


def _read_pairs(path: str, value: str = 'value') -> Dict[str, Tuple[str, int]]:
    """'<id> <value>' lines as {id: (value, line number)}; ids must be positive integers, each listed once."""
    pairs: Dict[str, Tuple[str, int]] = {}
    for lineno, line in _read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"'{path}', line {lineno}: expected '<id> <{value}>', got {line!r}")
        key, val = parts
        if not key.isdigit() or not key.isascii():
            raise ValueError(f"'{path}', line {lineno}: the id must be a positive integer, got {key!r} in {line!r}")
        if key in pairs:
            raise ValueError(f"'{path}', line {lineno}: id {key} is listed twice (first on line {pairs[key][1]})")
        pairs[key] = (val, lineno)
    return pairs


def _int_value(path: str, pair: Tuple[str, int], what: str) -> int:
    val, lineno = pair
    if not val.isdigit() or not val.isascii():
        raise ValueError(f"'{path}', line {lineno}: {what} must be an integer, got {val!r}")
    return int(val)


def _find_root(root: str) -> str:
    """Accept either the CUB_200_2011 folder itself or a folder that contains it."""
    for candidate in (root, os.path.join(root, 'CUB_200_2011')):
        if os.path.isfile(os.path.join(candidate, 'images.txt')):
            return candidate
    return root


class Cub2011(torch.utils.data.Dataset):
    """CUB-200-2011 birds (200 classes) read from its native layout; labels are 0-based.

    Args:
        root: The ``CUB_200_2011`` folder (or its parent).
        split: 'train' or 'test', as given by ``train_test_split.txt``.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
        check_files: Verify at construction that every image of the split exists.

    Raises:
        FileNotFoundError: A required file or folder is missing (the message names it and the expected layout).
        ValueError: Unknown split or malformed / inconsistent annotation files.
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = 'train',
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        loader: Optional[Callable[[str], Any]] = None,
        check_files: bool = True,
    ) -> None:
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test' for CUB-200-2011, got {split!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"CUB-200-2011 root '{root}' is not a directory.\n{CUB_LAYOUT}")
        self.root = _find_root(root)
        for name in _REQUIRED:
            path = os.path.join(self.root, name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"CUB-200-2011: missing '{path}'.\n{CUB_LAYOUT}")
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader or _pil_loader

        classes_file = os.path.join(self.root, 'classes.txt')
        class_rows = _read_pairs(classes_file, 'class name')
        class_ids = sorted(int(i) for i in class_rows)
        if class_ids != list(range(1, len(class_ids) + 1)):
            raise ValueError(f"'{classes_file}' must number classes 1..N, got ids {class_ids[:5]}...")
        self.classes: List[str] = [class_rows[str(i)][0] for i in class_ids]
        self.class_to_idx: Dict[str, int] = {n: i for i, n in enumerate(self.classes)}

        images_file = os.path.join(self.root, 'images.txt')
        labels_file = os.path.join(self.root, 'image_class_labels.txt')
        split_file = os.path.join(self.root, 'train_test_split.txt')
        paths = _read_pairs(images_file, 'relative/path.jpg')
        labels = _read_pairs(labels_file, 'class id')
        is_train = _read_pairs(split_file, '1 or 0')
        for image_id, pair in is_train.items():
            if pair[0] not in ('0', '1'):
                raise ValueError(f"'{split_file}', line {pair[1]}: the split of image {image_id} must be 1 (train) or "
                                 f'0 (test), got {pair[0]!r}')
        want = '1' if split == 'train' else '0'
        self.samples: List[Tuple[str, int]] = []
        lines: List[int] = []
        for image_id, (rel_path, lineno) in paths.items():
            if image_id not in labels or image_id not in is_train:
                missing = labels_file if image_id not in labels else split_file
                raise ValueError(f"'{images_file}', line {lineno}: image id {image_id} has no entry in '{missing}'")
            if is_train[image_id][0] != want:
                continue
            label = _int_value(labels_file, labels[image_id], f'the class of image {image_id}') - 1
            if not 0 <= label < len(self.classes):
                raise ValueError(f"'{labels_file}', line {labels[image_id][1]}: image {image_id} has class "
                                 f'{label + 1}, not in classes.txt (1..{len(self.classes)})')
            self.samples.append((os.path.join(self.root, 'images', rel_path), label))
            lines.append(lineno)
        self.targets: List[int] = [t for _, t in self.samples]
        if check_files:
            for (path, _), lineno in zip(self.samples, lines):
                if not os.path.isfile(path):
                    raise FileNotFoundError(
                        f"CUB-200-2011: image '{path}' listed in '{images_file}', line {lineno}, is missing."
                        f'\n{CUB_LAYOUT}')

    @property
    def num_classes(self) -> int:
        """Number of classes listed in ``classes.txt``."""
        return len(self.classes)

    @property
    def class_names(self) -> List[str]:
        """Class names from ``classes.txt`` in label order."""
        return self.classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        path, target = self.samples[index]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CUB-200-2011: image '{path}' listed in images.txt is missing")
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', split={self.split}, len={len(self)})"


def _pil_loader(path: str) -> Image.Image:
    with open(path, 'rb') as f:
        img = Image.open(f)
        return img.convert('RGB')
