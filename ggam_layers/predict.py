"""Top-k predictions of a trained model for image files: `predict` and the `ggam-layers predict` subcommand.

The model is anything `ggam_layers.hub.load_model` reads (a training run directory, a `save_pretrained` folder,
`local-dir:PATH`, `hf-hub:ORG/NAME[@REV]`, a registered tag such as the embedded `ggam_test_resnet.synthetic`), or
one of a run's `checkpoints/epoch-NNNN/` folders (`ggam_layers.hub.load_checkpoint`). Images go through timm's eval
transform of the model's data config (`resolve_model_data_config` + `create_transform`), in batches under
`torch.inference_mode`; label names come from the model's config (`pretrained_cfg['label_names']`). A file that
cannot be read is skipped, named in a warning and counted (`Predictions.skipped`). `cam_dir` writes, per image, the
model input beside its Grad-CAM map and spatial attention T (drawn by `ggam_layers.viz`, which needs matplotlib).
"""
import argparse
import csv
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.data
from PIL import Image

from ._lock import file_lock
from .data.folder import visible_images
from .data.integrity import BadSample, check_image

__all__ = [
    'IMAGE_SUFFIXES', 'OUTPUT_SUFFIXES', 'Prediction', 'Predictions', 'collect_images', 'format_table',
    'load_predict_model', 'main', 'predict', 'register_cli', 'run_predict', 'write_predictions',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
# files a folder contributes (torchvision's ImageFolder list); a file named on its own is read whatever its suffix
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
OUTPUT_SUFFIXES = ('.csv', '.json')
_MAX_WARNINGS = 20  # name this many unreadable files one by one, then summarise


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image.

    Attributes:
        path: The image file, as given (or as found under a given folder or list).
        labels: Class names, best first (the class index as text when the model has no label names).
        scores: Softmax probabilities of `labels`.
        classes: Class indices of `labels`.
    """
    path: str
    labels: Tuple[str, ...]
    scores: Tuple[float, ...]
    classes: Tuple[int, ...]

    def record(self) -> Dict[str, Any]:
        """The row of the CSV / JSON output: path, label_1, score_1, ..., label_k, score_k."""
        row: Dict[str, Any] = {'path': self.path}
        for k, (label, score) in enumerate(zip(self.labels, self.scores), 1):
            row[f'label_{k}'] = label
            row[f'score_{k}'] = score
        return row


@dataclass
class Predictions:
    """What `predict` returns: one `Prediction` per readable image, in input order, and the skipped files.

    Iterating, indexing and `len` go over `rows`.
    """
    rows: List[Prediction] = field(default_factory=list)
    skipped: List[BadSample] = field(default_factory=list)
    topk: int = 0
    cam_files: List[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Prediction:
        return self.rows[index]

    def records(self) -> List[Dict[str, Any]]:
        """The rows as dicts (`Prediction.record`)."""
        return [r.record() for r in self.rows]


# --- inputs ----------------------------------------------------------------------------------------------------------
def _list_file(path: Path) -> List[str]:
    """The image paths of a .txt list: one per line, blank lines and '#' comments skipped, relative paths taken
    relative to the list's folder."""
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f"INPUT '{path}': a .txt input must be a UTF-8 list of image paths, one per line ({e})") from e
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            out.append(line if os.path.isabs(line) else os.path.join(os.path.dirname(str(path)), line))
    return out


def collect_images(inputs: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """The image files named by `inputs`, in order: files as given, folders searched recursively (files with an
    image suffix, sorted; hidden files and folders, such as .ipynb_checkpoints, passed over and counted in the log),
    `.txt` files read as lists of paths (one per line; relative to the list's folder).

    A path listed in a .txt that does not exist is kept (`predict` skips and names it); a missing INPUT is an error.

    Raises:
        FileNotFoundError: An input does not exist.
        ValueError: No image was found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: List[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(visible_images(os.fspath(path), IMAGE_SUFFIXES))
        elif path.is_file() and path.suffix.lower() == '.txt':
            paths.extend(_list_file(path))
        elif path.is_file():
            paths.append(os.fspath(item))
        else:
            raise FileNotFoundError(f"INPUT '{item}': no such file or folder (expected image files, folders of images "
                                    'or a .txt list of image paths)')
    if not paths:
        raise ValueError(f'INPUT {[os.fspath(i) for i in inputs]} holds no images (folders contribute files ending in '
                         f'{", ".join(IMAGE_SUFFIXES)}; a .txt list names one image per line)')
    return paths


# --- model -----------------------------------------------------------------------------------------------------------
def _backbone_only(name: str) -> bool:
    """Whether a ggam_* name (with or without its tag) loads at most its backbone's ImageNet weights."""
    from timm.models import get_pretrained_cfg, split_model_name_tag

    from . import registry

    arch, tag = split_model_name_tag(name)
    if arch == 'ggam':
        return True
    if arch not in registry.GGAM_BACKBONES:
        return False
    try:
        cfg = get_pretrained_cfg(name if tag else arch)
    except RuntimeError:  # an unknown tag: load_model names it
        return False
    return cfg is None or cfg.tag == registry.GGAM_BACKBONES[arch][1]


def _refuse_untrained_tag(spec: str) -> None:
    """A ggam_* name whose tag loads only the backbone's ImageNet weights would predict with a random head."""
    import timm

    if _backbone_only(spec):
        trained = [t for t in timm.list_pretrained('ggam*') if not _backbone_only(t)]
        raise ValueError(f"MODEL {spec!r} has no trained GGAM weights (its tag loads at most the backbone's ImageNet "
                         'weights, the classifier would be random): pass a training run directory, a checkpoint '
                         f'folder, local-dir:PATH, hf-hub:ORG/NAME or a tag with GGAM weights ({", ".join(trained)})')


def load_predict_model(model: Union[PathLike, nn.Module], device: Union[str, torch.device] = 'cpu') -> nn.Module:
    """The model to predict with, in eval mode on `device`.

    Args:
        model: A module, a training run directory or `save_pretrained` folder (config.json + model.safetensors), a
            run's `checkpoints/epoch-NNNN/` folder, `local-dir:PATH`, `hf-hub:ORG/NAME[@REV]`, or a registered name
            with weights (e.g. `ggam_test_resnet.synthetic`, or a plain timm model such as `resnet50.a1_in1k`).
        device: Where to put it.
    """
    from . import hub

    if isinstance(model, nn.Module):
        return model.to(device).eval()
    spec = os.fspath(model)
    path = Path(spec)
    if path.is_dir():
        loaded = hub.load_model(path) if (path / 'config.json').is_file() else hub.load_checkpoint(path)[0]
    elif path.is_file():
        loaded = hub.load_model(path)  # a model.safetensors beside its config.json (load_model names the fix else)
    else:
        if ':' not in spec:
            _refuse_untrained_tag(spec)
        loaded = hub.load_model(spec)
    return loaded.to(device).eval()


def _label_names(model: nn.Module, label_names: Optional[Sequence[str]]) -> Optional[List[str]]:
    num_classes = getattr(model, 'num_classes', None)
    names: Any = label_names
    if names is None:
        names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if isinstance(names, dict):  # save_pretrained accepts index -> name; JSON keys are strings
        names = [names.get(i, names.get(str(i), str(i))) for i in range(num_classes or len(names))]
    if not names:
        return None
    names = [str(n) for n in names]
    if num_classes is not None and len(names) != num_classes:
        if label_names is not None:
            raise ValueError(f'label_names has {len(names)} names, but the model has num_classes={num_classes}')
        _logger.warning('the model config lists %d label names for %d classes: printing class indices instead',
                        len(names), num_classes)
        return None
    return names


# --- images ----------------------------------------------------------------------------------------------------------
class _ImageFiles(torch.utils.data.Dataset):
    """(index, tensor, None) for a readable file, (index, None, reason) for one that is not."""

    def __init__(self, paths: Sequence[str], transform: Any) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        path = self.paths[index]
        if not os.path.isfile(path):
            return index, None, 'no such file'
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # PIL's EXIF and DecompressionBomb warnings
                with Image.open(path) as img:
                    rgb = img.convert('RGB')
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, MemoryError) as e:
            return index, None, check_image(path) or str(e) or type(e).__name__
        return index, self.transform(rgb), None


def _as_list(batch: List[Any]) -> List[Any]:
    return batch


# --- Grad-CAM overlays -----------------------------------------------------------------------------------------------
def _cam_paths(paths: Sequence[str], cam_dir: Path) -> List[Path]:
    """One `<name>_cam.png` per image under `cam_dir`, keeping the images' folders below their common folder."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath(folders) if folders else ''
    out: List[Path] = []
    used = set()
    for p in paths:
        rel = os.path.splitext(os.path.relpath(os.path.abspath(p), root))[0]
        name, n = f'{rel}_cam.png', 2
        while name in used:
            name, n = f'{rel}_cam-{n}.png', n + 1
        used.add(name)
        out.append(cam_dir / name)
    return out


def _check_cam_dir(cam_paths: Sequence[Path], overwrite: bool) -> None:
    existing = [p for p in cam_paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f'--cam: {len(existing)} of the overlay files exist already (e.g. {existing[0]}); pass '
                              '--overwrite (overwrite=True) to replace them, or choose another folder')


def _write_cams(model: nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                targets: Sequence[Path]) -> None:
    """The model input | Grad-CAM of the predicted class | spatial attention T, side by side, one PNG per image."""
    import numpy as np

    from .viz import cam_maps, overlay_heatmap

    maps = cam_maps(model, x)
    images = (x.detach().float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for i, target in enumerate(targets):
        panels = [images[i], overlay_heatmap(images[i], maps.heatmap[i])]
        if maps.attention is not None:
            panels.append(overlay_heatmap(images[i], maps.attention[i]))
        strip = (np.concatenate(panels, axis=1) * 255.0 + 0.5).astype(np.uint8)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(target)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError('--cam (cam_dir) draws with matplotlib: pip install "ggam-layers[viz]"') from e


# --- predict ---------------------------------------------------------------------------------------------------------
def _default_device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def predict(
        model: Union[PathLike, nn.Module],
        inputs: Union[PathLike, Sequence[PathLike]],
        topk: int = 5,
        batch_size: int = 32,
        device: Optional[Union[str, torch.device]] = None,
        label_names: Optional[Sequence[str]] = None,
        cam_dir: Optional[PathLike] = None,
        overwrite: bool = False,
        workers: int = 0,
        progress: Optional[bool] = False,
) -> Predictions:
    """The top-k classes of every image in `inputs`.

    Args:
        model: A module, or what `load_predict_model` reads (run directory, checkpoint folder, `local-dir:PATH`,
            `hf-hub:ORG/NAME[@REV]`, a registered tag with weights).
        inputs: Image files, folders (searched recursively) and `.txt` lists of image paths (`collect_images`).
        topk: Classes per image (at most the model's number of classes).
        batch_size: Images per forward pass.
        device: 'cpu', 'cuda', 'cuda:1', ...; the GPU when there is one, else the CPU, when None.
        label_names: Class names in classifier order; the model config's `label_names` when None.
        cam_dir: Write `<name>_cam.png` per image here (input, Grad-CAM, T); GGAM models only, needs matplotlib.
        overwrite: Replace overlay files that exist in `cam_dir` (refused otherwise, before anything runs).
        workers: DataLoader worker processes reading the images (0: read them in this process).
        progress: Show a progress bar (tqdm, on stderr); None: only when stderr is a terminal.

    Returns:
        `Predictions`: a row per readable image in input order, and the skipped files with the reason.

    Raises:
        ValueError: A bad argument, or no input could be read.
        FileNotFoundError: An input or the model does not exist.
        FileExistsError: An overlay file exists in `cam_dir` and `overwrite` is False.
    """
    from timm.data import create_transform, resolve_model_data_config
    from tqdm import tqdm

    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f'topk must be a positive int, got {topk!r}')
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int, got {batch_size!r}')
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f'workers must be an int >= 0, got {workers!r}')
    paths = collect_images(inputs)
    cam_paths = None
    if cam_dir is not None:
        _require_matplotlib()
        cam_paths = _cam_paths(paths, Path(cam_dir))
        _check_cam_dir(cam_paths, overwrite)
    device = torch.device(device) if device is not None else _default_device()
    net = load_predict_model(model, device)
    if cam_paths is not None:
        from .model import GGAMModel

        if not isinstance(net, GGAMModel):
            raise ValueError(f'cam_dir (--cam) needs a GGAM model; the model is a {type(net).__name__}')
    names = _label_names(net, label_names)
    num_classes = getattr(net, 'num_classes', None) or 0
    data_cfg = resolve_model_data_config(net)
    transform = create_transform(**data_cfg, is_training=False)
    mean = torch.tensor(data_cfg['mean'], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(data_cfg['std'], dtype=torch.float32).view(1, -1, 1, 1)
    dtype = next(net.parameters()).dtype

    out = Predictions()
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, transform), batch_size=batch_size, num_workers=workers,
                                         collate_fn=_as_list)
    with tqdm(total=len(paths), unit='img', desc='predict', disable=None if progress is None else not progress,
              file=sys.stderr) as bar:
        for batch in loader:
            good = [(i, x) for i, x, _ in batch if x is not None]
            for i, _, reason in batch:
                if reason is not None:
                    out.skipped.append(BadSample(i, paths[i], reason))
                    if len(out.skipped) <= _MAX_WARNINGS:
                        _logger.warning('skipping unreadable image %s (%s)', paths[i], reason)
            if good:
                x = torch.stack([t for _, t in good]).to(device=device, dtype=dtype)
                with torch.inference_mode():
                    logits = net(x)
                k = min(topk, logits.shape[1])
                scores, classes = logits.float().softmax(1).topk(k, dim=1)
                for (i, _), s, c in zip(good, scores.tolist(), classes.tolist()):
                    labels = tuple(names[j] if names else str(j) for j in c)
                    out.rows.append(Prediction(paths[i], labels, tuple(s), tuple(c)))
                out.topk = k
                if cam_paths is not None:  # Grad-CAM needs autograd where the closed form does not apply
                    targets = [cam_paths[i] for i, _ in good]
                    _write_cams(net, x, mean, std, targets)
                    out.cam_files.extend(os.fspath(t) for t in targets)
            bar.update(len(batch))
    if len(out.skipped) > _MAX_WARNINGS:
        _logger.warning('%d more unreadable images skipped (%d in all)', len(out.skipped) - _MAX_WARNINGS,
                        len(out.skipped))
    if not out.rows:
        first = out.skipped[0]
        raise ValueError(f'none of the {len(paths)} input images could be read (first: {first.path}: {first.reason})')
    if not out.topk:
        out.topk = min(topk, num_classes)
    return out


# --- output ----------------------------------------------------------------------------------------------------------
def _check_out(path: PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end in .csv or .json (the format follows the extension), got '{path}'")
    if path.is_dir():
        raise ValueError(f"--out '{path}' is a folder; name a .csv or .json file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--out '{path}' exists; pass --overwrite (overwrite=True) to replace it")
    return path


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8', newline='') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_predictions(predictions: Predictions, path: PathLike, overwrite: bool = False) -> Path:
    """Write the rows as CSV (path, label_1, score_1, ..., label_k, score_k) or JSON (a list of those rows).

    Args:
        predictions: What `predict` returned.
        path: A `.csv` or `.json` file; the format follows the extension.
        overwrite: Replace an existing file (refused otherwise).
    """
    path = _check_out(path, overwrite)
    records = predictions.records()
    if path.suffix.lower() == '.json':
        text = json.dumps(records, indent=2, ensure_ascii=False) + '\n'
    else:
        columns = ['path'] + [f'{kind}_{k}' for k in range(1, predictions.topk + 1) for kind in ('label', 'score')]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator='\n')
        writer.writeheader()
        writer.writerows(records)
        text = buf.getvalue()
    _atomic_write(path, text)
    return path


def format_table(predictions: Predictions) -> str:
    """The rows as an aligned text table: the path, then `label (score)` for each of the top k."""
    header = ['path'] + [f'top-{k}' for k in range(1, predictions.topk + 1)]
    rows = [[r.path] + [f'{label} ({score:.3f})' for label, score in zip(r.labels, r.scores)] for r in predictions]
    widths = [max(len(row[c]) for row in [header] + rows if c < len(row)) for c in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows)


# --- command line ----------------------------------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    """The `predict` subcommand."""
    # the --out file is this run's from the check to the write: another predict into it is refused at once
    with file_lock(args.out, '--out file', 'another --out') if args.out is not None else nullcontext():
        return _run_predict(args)


def _run_predict(args: argparse.Namespace) -> int:
    if args.out is not None:
        _check_out(args.out, args.overwrite)  # before any work: no user file lost, no run wasted
    labels = None
    if args.labels:
        labels = [line.strip() for line in Path(args.labels).read_text(encoding='utf-8').splitlines() if line.strip()]
    result = predict(args.model, args.inputs, topk=args.topk, batch_size=args.batch_size, device=args.device,
                     label_names=labels, cam_dir=args.cam, overwrite=args.overwrite, workers=args.workers,
                     progress=False if args.no_progress else None)
    if args.out is not None:
        print(f'wrote {len(result)} predictions to {write_predictions(result, args.out, args.overwrite)}')
    else:
        print(format_table(result))
    if args.cam is not None:
        print(f'wrote {len(result.cam_files)} Grad-CAM overlays to {args.cam}')
    if result.skipped:
        print(f'skipped {len(result.skipped)} unreadable file(s): '
              + '; '.join(f'{b.path} ({b.reason})' for b in result.skipped), file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `predict` subcommand to an argparse subparsers object; it sets `func=run_predict`."""
    p = subparsers.add_parser(
        'predict', help='top-k classes of image files with a trained model (CSV, JSON or a table)',
        description='Predict the top-k classes of images with a trained model, through timm\'s eval transform of the '
                    'model\'s data config. Unreadable files are skipped and named.')
    p.add_argument('model', metavar='MODEL',
                   help='a training run directory or checkpoint folder (config.json + model.safetensors), '
                        'local-dir:PATH, hf-hub:ORG/NAME[@REV], or a registered tag such as '
                        'ggam_test_resnet.synthetic')
    p.add_argument('inputs', nargs='+', metavar='INPUT',
                   help='image files, folders of images (searched recursively) or .txt files listing image paths')
    p.add_argument('--topk', type=_positive, default=5, metavar='K', help='classes per image (default 5)')
    p.add_argument('--out', default=None, metavar='FILE',
                   help='write FILE.csv or FILE.json (format by extension); default: print a table')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out file and --cam overlays')
    p.add_argument('--cam', default=None, metavar='DIR',
                   help='write one PNG per image to DIR: the model input, its Grad-CAM map and spatial attention T '
                        '(GGAM models; needs matplotlib)')
    p.add_argument('--batch-size', type=_positive, default=32, metavar='N', help='images per batch (default 32)')
    p.add_argument('--device', default=None, metavar='D', help='cpu, cuda, cuda:1, ... (default: cuda if available)')
    p.add_argument('--labels', default=None, metavar='FILE.txt',
                   help="class names, one per line, instead of the model config's label_names")
    p.add_argument('--workers', type=int, default=0, metavar='N', help='image reading processes (default 0)')
    p.add_argument('--no-progress', action='store_true',
                   help='no progress bar (by default one is shown when stderr is a terminal)')
    p.set_defaults(func=run_predict)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m ggam_layers.predict MODEL INPUT...`, the same as `ggam-layers predict MODEL INPUT...`."""
    parser = argparse.ArgumentParser(prog='python -m ggam_layers.predict')
    sub = parser.add_subparsers(dest='command', required=True)
    register_cli(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(['predict'] + argv if argv[:1] != ['predict'] else argv)
    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        parser.exit(2, f'predict: error: {e}\n')


if __name__ == '__main__':
    raise SystemExit(main())
