"""iNaturalist reader for the official releases' COCO-style JSON annotations (2017, 2018, 2019, 2021)."""
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ._listed import ListedImages, dataset_root

__all__ = ['INAT_ANNOTATIONS', 'INAT_LAYOUT', 'INaturalist']

# version -> split -> (annotation file, image folder the file names start with)
INAT_ANNOTATIONS: Dict[str, Dict[str, Tuple[str, str]]] = {
    '2017': {'train': ('train2017.json', 'train_val_images'), 'val': ('val2017.json', 'train_val_images')},
    '2018': {'train': ('train2018.json', 'train_val2018'), 'val': ('val2018.json', 'train_val2018')},
    '2019': {'train': ('train2019.json', 'train_val2019'), 'val': ('val2019.json', 'train_val2019')},
    '2021': {'train': ('train.json', 'train'), 'train_mini': ('train_mini.json', 'train_mini'),
             'val': ('val.json', 'val')},
}

INAT_LAYOUT = """iNaturalist layout (the official release: annotation JSON + image archive) expected under root:
  2017: train2017.json, val2017.json     images under train_val_images/<supercategory>/<name>/<file>.jpg
  2018: train2018.json, val2018.json     images under train_val2018/<supercategory>/<category_id>/<file>.jpg
  2019: train2019.json, val2019.json     images under train_val2019/<supercategory>/<category_id>/<file>.jpg
  2021: train.json, train_mini.json, val.json    images under train/, train_mini/, val/<category folder>/<file>.jpg
Each JSON is COCO-style: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "category_id"}],
"categories": [{"id", "name", ...}]}, file_name relative to root. Labels are 0..N-1 over the categories in id order;
the test sets have no labels (split 'test' reads val)."""


def _load_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"'{path}' is not valid JSON ({e}); restore it from the release archive") from e
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' must hold a JSON object with images, annotations and categories, got "
                         f'{type(data).__name__}.\n{INAT_LAYOUT}')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            raise ValueError(f"'{path}' has no '{key}' list"
                             + (' (a test set: it has no labels)' if key == 'annotations' else '')
                             + f'.\n{INAT_LAYOUT}')
    return data


def _field(path: str, kind: str, n: int, entry: Any, key: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise ValueError(f"'{path}': {kind}[{n}] has no '{key}' (got {str(entry)[:120]}).\n{INAT_LAYOUT}")
    return entry[key]


def _detect_version(root: str, split: str) -> str:
    found = [v for v, splits in INAT_ANNOTATIONS.items()
             if split in splits and os.path.isfile(os.path.join(root, splits[split][0]))]
    if len(found) == 1:
        return found[0]
    if not found:
        wanted = ', '.join(s[split][0] for s in INAT_ANNOTATIONS.values() if split in s)
        raise FileNotFoundError(f"iNaturalist: no annotation file for split '{split}' in '{root}' (looked for "
                                f'{wanted}).\n{INAT_LAYOUT}')
    raise ValueError(f"iNaturalist: '{root}' holds the {split} annotations of several releases ({', '.join(found)}); "
                     f'pass version= one of them')


class INaturalist(ListedImages):
    """iNaturalist species classification (2017: 5,089 classes; 2018: 8,142; 2019: 1,010; 2021: 10,000).

    Reads the release's JSON for the split; the categories are numbered 0..N-1 in id order (in the official files
    the ids run 0..N-1, so labels equal them), and train and val list the same categories.

    Args:
        root: The folder holding the annotation JSON files and the image folders.
        split: 'train' or 'val' ('train_mini' for 2021).
        version: '2017', '2018', '2019' or '2021'; found from the annotation files under root when None.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        loader: Image loader; the default opens the file with PIL and converts it to RGB.
        check_files: Verify at construction that every image of the split exists.

    Attributes:
        category_ids: The release's category id of each label.
        supercategories: Each label's supercategory (iconic group), or '' where the JSON has none.

    Raises:
        FileNotFoundError: The annotation file or an image is missing (named, with the expected layout).
        ValueError: Unknown split or version, or malformed annotations (file and entry named).
    """

    def __init__(
        self,
        root: Union[str, os.PathLike],
        split: str = 'train',
        version: Optional[str] = None,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        loader: Optional[Callable[[str], Any]] = None,
        check_files: bool = True,
    ) -> None:
        root = dataset_root(root, 'iNaturalist', INAT_LAYOUT)
        if version is not None:
            version = str(version)
            if version not in INAT_ANNOTATIONS:
                raise ValueError(f'version must be one of {tuple(INAT_ANNOTATIONS)} for iNaturalist, got {version!r}')
        splits = sorted({s for v in INAT_ANNOTATIONS.values() for s in v} if version is None
                        else INAT_ANNOTATIONS[version])
        if split not in splits:
            raise ValueError(f'split must be one of {tuple(splits)} for iNaturalist'
                             + (f' {version}' if version else '') + f', got {split!r}')
        self.version = version or _detect_version(root, split)
        self.root = root
        self.split = split
        ann_name = INAT_ANNOTATIONS[self.version][split][0]
        ann = os.path.join(root, ann_name)
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"iNaturalist {self.version}: missing '{ann}'.\n{INAT_LAYOUT}")
        data = _load_json(ann)

        cats: Dict[int, Dict[str, Any]] = {}
        for n, c in enumerate(data['categories']):
            cid = _field(ann, 'categories', n, c, 'id')
            if cid in cats:
                raise ValueError(f"'{ann}': categories[{n}] repeats category id {cid}")
            _field(ann, 'categories', n, c, 'name')
            cats[cid] = c
        self.category_ids: List[int] = sorted(cats)
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        classes = [str(cats[c]['name']) for c in self.category_ids]
        self.supercategories: List[str] = [str(cats[c].get('supercategory', '')) for c in self.category_ids]

        category_of: Dict[Any, int] = {}
        for n, a in enumerate(data['annotations']):
            image_id = _field(ann, 'annotations', n, a, 'image_id')
            cid = _field(ann, 'annotations', n, a, 'category_id')
            if cid not in label_of:
                raise ValueError(f"'{ann}': annotations[{n}] has category_id {cid}, which 'categories' does not list")
            if image_id in category_of:
                raise ValueError(f"'{ann}': annotations[{n}] labels image {image_id} a second time")
            category_of[image_id] = label_of[cid]
        samples: List[Tuple[str, int]] = []
        where: List[str] = []
        for n, img in enumerate(data['images']):
            image_id = _field(ann, 'images', n, img, 'id')
            file_name = _field(ann, 'images', n, img, 'file_name')
            if image_id not in category_of:
                raise ValueError(f"'{ann}': images[{n}] (id {image_id}, {file_name}) has no annotation")
            samples.append((os.path.join(root, file_name), category_of[image_id]))
            where.append(f"'{ann}', images[{n}]")
        super().__init__(samples, classes, f'iNaturalist {self.version}', transform, target_transform, loader)
        if check_files:
            self.check_files(where, INAT_LAYOUT)
