"""What the file-list readers (CUB-200-2011, NABirds, Stanford Dogs, iNaturalist) share: index-file parsing, the
root and split checks, and a dataset of (path, label) samples."""
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch.utils.data
from PIL import Image

__all__ = ['ListedImages', 'SplitImages', 'check_required', 'dataset_root', 'find_root', 'int_value', 'pil_loader',
           'read_id_pairs', 'read_lines']


def pil_loader(path: str) -> Image.Image:
    """Open an image file with PIL and convert it to RGB."""
    with open(path, 'rb') as f:
        img = Image.open(f)
        return img.convert('RGB')


def read_lines(path: str) -> List[Tuple[int, str]]:
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


def read_id_pairs(path: str, value: str = 'value', numeric_ids: bool = False) -> Dict[str, Tuple[str, int]]:
    """'<id> <value>' lines as {id: (value, line number)}; an id is any token without spaces (a positive integer
    with `numeric_ids`), each listed once."""
    pairs: Dict[str, Tuple[str, int]] = {}
    for lineno, line in read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"'{path}', line {lineno}: expected '<id> <{value}>', got {line!r}")
        key, val = parts
        if numeric_ids and (not key.isdigit() or not key.isascii()):
            raise ValueError(f"'{path}', line {lineno}: the id must be a positive integer, got {key!r} in {line!r}")
        if key in pairs:
            raise ValueError(f"'{path}', line {lineno}: id {key} is listed twice (first on line {pairs[key][1]})")
        pairs[key] = (val, lineno)
    return pairs


def int_value(path: str, pair: Tuple[str, int], what: str, kind: str = 'an integer') -> int:
    """The (value, line number) `pair` read from `path` as a non-negative integer; `what` and `kind` name it in
    the error."""
    val, lineno = pair
    if not val.isdigit() or not val.isascii():
        raise ValueError(f"'{path}', line {lineno}: {what} must be {kind}, got {val!r}")
    return int(val)


def dataset_root(root: Union[str, os.PathLike], name: str, layout: str) -> str:
    """`root` as a string; FileNotFoundError naming the dataset and its layout when it is not a directory."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name} root '{root}' is not a directory.\n{layout}")
    return root


def find_root(root: str, subfolders: Sequence[str], marker: str, is_marker: Callable[[str], bool] = os.path.isfile
              ) -> str:
    """The first of `root` and `root/<subfolder>` that holds `marker` (tested with `is_marker`), else `root`."""
    for candidate in (root, *(os.path.join(root, s) for s in subfolders)):
        if is_marker(os.path.join(candidate, marker)):
            return candidate
    return root


def check_required(root: str, names: Sequence[str], name: str, layout: str) -> Dict[str, str]:
    """{name: path} of the files and folders `names` under `root`; FileNotFoundError naming the first missing one."""
    files = {n: os.path.join(root, n) for n in names}
    for path in files.values():
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name}: missing '{path}'.\n{layout}")
    return files


class ListedImages(torch.utils.data.Dataset):
    """Images listed with their labels; 0-based labels, `classes` in label order.

    Args:
        samples: (image path, label) pairs.
        classes: Class names in label order.
        name: The dataset's name in messages.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
    """

    _listed_in = ''  # where __getitem__'s message says a missing image is listed (' listed in <file>'), if anywhere

    def __init__(
        self,
        samples: Sequence[Tuple[str, int]],
        classes: Sequence[str],
        name: str,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        loader: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self.samples: List[Tuple[str, int]] = list(samples)
        self.targets: List[int] = [t for _, t in self.samples]
        self.classes: List[str] = list(classes)
        self.class_to_idx: Dict[str, int] = {n: i for i, n in enumerate(self.classes)}
        self.name = name
        self.transform = transform
        self.target_transform = target_transform
        self.loader = loader or pil_loader

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def class_names(self) -> List[str]:
        """Class names in label order."""
        return self.classes

    def check_files(self, where: Sequence[str], layout: str) -> None:
        """Raise FileNotFoundError naming the first missing image and where it is listed (`where[i]` for sample i)."""
        for (path, _), listed in zip(self.samples, where):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{self.name}: image '{path}' listed in {listed} is missing.\n{layout}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        path, target = self.samples[index]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{self.name}: image '{path}'{self._listed_in} is missing")
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        root = getattr(self, 'root', None)
        return f"{type(self).__name__}(root='{root}', split={getattr(self, 'split', None)}, len={len(self)})"


class SplitImages(ListedImages):
    """A release read from its folder one split ('train' or 'test') at a time.

    A subclass sets `_NAME` (the dataset's name in messages), `_LAYOUT` (the expected layout, quoted by every error
    about a missing file) and `_REQUIRED` (the files and folders checked under the root), and provides `_read`;
    `_find_root` may accept a parent of the release folder.

    Args:
        root: The release folder (or a parent that `_find_root` accepts).
        split: 'train' or 'test'.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
        check_files: Verify at construction that every image of the split exists.
    """

    _NAME = ''
    _LAYOUT = ''
    _REQUIRED: Tuple[str, ...] = ()

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
            raise ValueError(f"split must be 'train' or 'test' for {self._NAME}, got {split!r}")
        self.root = self._find_root(dataset_root(root, self._NAME, self._LAYOUT))
        self.split = split
        files = check_required(self.root, self._REQUIRED, self._NAME, self._LAYOUT)
        samples, classes, where = self._read(files, split)
        super().__init__(samples, classes, self._NAME, transform, target_transform, loader)
        if check_files:
            self.check_files(where, self._LAYOUT)

    @staticmethod
    def _find_root(root: str) -> str:
        """The release folder given `root`, which exists."""
        return root

    def _read(self, files: Dict[str, str], split: str) -> Tuple[List[Tuple[str, int]], List[str], List[str]]:
        """(samples, class names, where each sample is listed) of `split`; `files` maps `_REQUIRED` to paths."""
        raise NotImplementedError
