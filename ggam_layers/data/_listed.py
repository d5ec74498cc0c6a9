"""What the file-list readers (NABirds, Stanford Dogs, iNaturalist) share: a list of (path, label) samples."""
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch.utils.data

from .cub import _pil_loader, _read_lines

__all__ = ['ListedImages', 'read_id_pairs']


def read_id_pairs(path: str, value: str = 'value') -> Dict[str, Tuple[str, int]]:
    """'<id> <value>' lines as {id: (value, line number)}; an id is any token without spaces, each listed once."""
    pairs: Dict[str, Tuple[str, int]] = {}
    for lineno, line in _read_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"'{path}', line {lineno}: expected '<id> <{value}>', got {line!r}")
        key, val = parts
        if key in pairs:
            raise ValueError(f"'{path}', line {lineno}: id {key} is listed twice (first on line {pairs[key][1]})")
        pairs[key] = (val, lineno)
    return pairs


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
        self.loader = loader or _pil_loader

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
            raise FileNotFoundError(f"{self.name}: image '{path}' is missing")
        img = self.loader(path)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __repr__(self) -> str:
        root = getattr(self, 'root', None)
        return f"{type(self).__name__}(root='{root}', split={getattr(self, 'split', None)}, len={len(self)})"
