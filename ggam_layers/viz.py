"""Where the model looks: Grad-CAM heat maps and the spatial attention map T of a GGAM model (the paper's Fig. 3).

The heat map is Grad-CAM at the GGAM head's input features A, with the head's own hook-free weights beta (eq. 4):

    cam = ReLU(sum_c beta_c A_c)                      h x w, then bilinear to the image size and min-max scaled

`cam_maps` computes it batched in one forward pass (no hooks, no `.backward()`, no parameter's `.grad` touched, the
train/eval flags of every module restored), together with the spatial attention T, the predicted labels and their
softmax scores. `render_cam_grid` draws a figure (rows: images; column groups: models) with matplotlib, imported
lazily (the `viz` extra); `register_cli` adds the `ggam-layers cam` subcommand.
"""
import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .gradcam import grad_cam_weights
from .model import GGAMModel

__all__ = [
    'CamMaps', 'cam_grid_size', 'cam_maps', 'feature_grid', 'grad_cam_map', 'load_cam_model', 'load_image', 'main',
    'normalize_maps', 'overlay_heatmap', 'plot_cam_grid', 'plot_confusion', 'register_cli', 'render_cam_grid',
    'run_cam',
]

Box = Tuple[float, float, float, float]
ImageLike = Union[str, Path, np.ndarray, torch.Tensor, Any]  # Any: a PIL image


class CamMaps(NamedTuple):
    """What `cam_maps` returns; every tensor has the batch first and lives on the input's device.

    Attributes:
        heatmap: Grad-CAM ReLU(sum_c beta_c A_c), bilinear to the image size, min-max scaled to [0, 1], B x H x W
            (all zeros where the map is constant).
        attention: Spatial attention T, bilinear to the image size, min-max scaled to [0, 1], B x H x W; None when the
            model has no spatial attention.
        labels: Predicted class (argmax of the logits), B.
        scores: Softmax probability of the predicted class, B.
        classes: Class whose Grad-CAM map was computed (`labels` unless given), B.
        probs: Softmax probabilities, B x K.
        cam: Grad-CAM map at the feature resolution before scaling (ReLU applied), B x h x w.
        spatial_weights: T at the feature resolution, unscaled, B x h x w; None without spatial attention.
        cam_weights: beta, B x C.
    """
    heatmap: torch.Tensor
    attention: Optional[torch.Tensor]
    labels: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    probs: torch.Tensor
    cam: torch.Tensor
    spatial_weights: Optional[torch.Tensor]
    cam_weights: torch.Tensor


def feature_grid(model: GGAMModel, img_hw: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """(h, w) patch grid of a token backbone for an input of `img_hw`; None for NCHW / NHWC backbones.

    Args:
        model: A GGAM model.
        img_hw: Input height and width.
    """
    return model.grid_size(img_hw)


def grad_cam_map(features: torch.Tensor, cam_weights: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c beta_c A_c) in float32 (at least).

    Args:
        features: A, B x C x h x w.
        cam_weights: beta, B x C.
    """
    if features.ndim != 4 or cam_weights.shape != features.shape[:2]:
        raise ValueError(f'features must be (B, C, h, w) and cam_weights (B, C), got {tuple(features.shape)} and '
                         f'{tuple(cam_weights.shape)}')
    dtype = torch.promote_types(features.dtype, torch.float32)
    return torch.einsum('bc,bchw->bhw', cam_weights.to(dtype), features.to(dtype)).clamp_min(0)


def normalize_maps(maps: torch.Tensor, size: Optional[Tuple[int, int]] = None, eps: float = 1e-12) -> torch.Tensor:
    """Bilinear resize (optional) then min-max scale each map to [0, 1]; a constant map becomes all zeros.

    Args:
        maps: B x h x w.
        size: Output (H, W); None keeps the size.
        eps: Ranges at or below this (relative to the map's largest magnitude) count as constant.
    """
    if maps.ndim != 3:
        raise ValueError(f'maps must be (B, h, w), got shape {tuple(maps.shape)}')
    maps = maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps
    if size is not None and tuple(size) != tuple(maps.shape[-2:]):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode='bilinear', align_corners=False)[:, 0]
    flat = maps.flatten(1)
    lo, hi = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    span = hi - lo
    scale = flat.abs().amax(1)[:, None, None]
    ok = span > eps * scale.clamp_min(1e-30)
    return torch.where(ok, (maps - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(maps))


@contextlib.contextmanager
def _eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Eval mode inside the block; every module's own training flag is restored afterwards."""
    if not enabled:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _as_classes(classes: Any, batch: int, device: torch.device) -> Optional[torch.Tensor]:
    if classes is None:
        return None
    if isinstance(classes, int):
        return torch.full((batch,), classes, dtype=torch.long, device=device)
    t = torch.as_tensor(classes, device=device)
    if t.is_floating_point() or t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f'classes must be an int or {batch} integer class indices, got {classes!r}')
    return t.long()


def cam_maps(
        model: GGAMModel,
        images: torch.Tensor,
        classes: Optional[Union[int, Sequence[int], torch.Tensor]] = None,
        eval_mode: bool = True,
) -> CamMaps:
    """Grad-CAM heat maps at the GGAM head's input A, and the spatial attention T, for a batch of images.

    One forward pass; beta comes from the head's own `forward_ggam` (closed form where it applies, otherwise autograd
    with respect to A only); an SE or CBAM head (`attention='se'` / `'cbam'`) has beta by autograd on the head and
    no T. No hooks are registered, nothing calls `.backward()`, and no parameter's `.grad` or
    `requires_grad` changes.

    Args:
        model: A GGAM model (any wrapped timm backbone: NCHW, NHWC or tokens).
        images: Preprocessed (normalised) images, B x in_chans x H x W, on the model's device, any size the backbone
            accepts.
        classes: Class to explain, one for all or one per image; the predicted class when None (paper).
        eval_mode: Run in eval mode (BatchNorm running statistics, no dropout) and restore every module's own
            training flag afterwards. False runs the model as it is; in train mode BatchNorm then updates its running
            statistics, as in any training-mode forward.
    """
    if not isinstance(model, GGAMModel):
        raise TypeError(f'model must be a GGAMModel (wrap_timm_model or a ggam_* model), got {type(model).__name__}')
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f'images must be a (B, C, H, W) tensor, got {getattr(images, "shape", type(images).__name__)}')
    target = _as_classes(classes, images.shape[0], images.device)
    if target is not None and (target.min() < 0 or target.max() >= model.num_classes):
        raise ValueError(f'classes must lie in [0, {model.num_classes}), got {target.tolist()}')
    img_hw = tuple(images.shape[-2:])
    with _eval_mode(model, eval_mode), torch.no_grad():
        feats = model.features_to_nchw(model.forward_features(images), feature_grid(model, img_hw))
        if model.attention == 'ggam':
            out = model.head.forward_ggam(feats, target)
            logits, cam_weights, explained = out.logits, out.cam_weights, out.classes
            spatial = out.spatial_weights.detach().float() if model.head.attn.spatial_attn else None
        else:  # an SE / CBAM head: Grad-CAM by autograd on the head alone, no spatial map T
            res = grad_cam_weights(feats, model.head, target)
            logits, cam_weights, explained, spatial = res.scores.detach(), res.weights, res.classes, None
        cam = grad_cam_map(feats, cam_weights)
    probs = logits.detach().float().softmax(1)
    scores, labels = probs.max(1)
    return CamMaps(
        heatmap=normalize_maps(cam, img_hw),
        attention=normalize_maps(spatial, img_hw) if spatial is not None else None,
        labels=labels,
        scores=scores,
        classes=explained.detach(),
        probs=probs,
        cam=cam,
        spatial_weights=spatial,
        cam_weights=cam_weights.detach(),
    )


# --- images ------------------------------------------------------------------------------------------------------
def load_image(image: ImageLike, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """An image as an H x W x 3 float32 array in [0, 1], optionally resized (bilinear) to `size` = (H, W).

    Args:
        image: A file path, a PIL image, an H x W (x 3) uint8 / float array, or a 3 x H x W tensor (uint8 or float in
            [0, 1]).
        size: Output (H, W); None keeps the image's size.
    """
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as f:
            pil = f.convert('RGB')
    elif isinstance(image, Image.Image):
        pil = image.convert('RGB')
    else:
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] not in (1, 3):
                raise ValueError(f'image tensor must be (3, H, W) or (1, H, W), got {tuple(image.shape)}')
            image = image.detach().cpu().permute(1, 2, 0).numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(f'image must be a path, PIL image, array or tensor, got {type(image).__name__}')
        arr = image
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise ValueError(f'image array must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}')
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)
    if size is not None and (pil.height, pil.width) != tuple(size):
        pil = pil.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(pil, dtype=np.float32) / 255.0


def _model_input(model: nn.Module, arrays: Sequence[np.ndarray]) -> torch.Tensor:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    mean = torch.tensor(cfg['mean'], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg['std'], dtype=torch.float32).view(1, -1, 1, 1)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    x = (x - mean) / std
    ref = next(model.parameters())
    return x.to(device=ref.device, dtype=ref.dtype)


def _input_size(model: nn.Module) -> Tuple[int, int]:
    from timm.data import resolve_model_data_config

    return tuple(resolve_model_data_config(model)['input_size'][-2:])


def _as_size(size: Optional[Union[int, Sequence[int]]]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f'img_size must be an int or (H, W), got {size!r}')
    return size


# --- rendering ---------------------------------------------------------------------------------------------------
def overlay_heatmap(image: np.ndarray, heat: Union[np.ndarray, torch.Tensor], alpha: float = 0.5,
                    cmap: str = 'jet') -> np.ndarray:
    """Blend a colour-mapped [0, 1] map over an image.

    Args:
        image: H x W x 3 float array in [0, 1].
        heat: H x W map in [0, 1].
        alpha: Weight of the colour map.
        cmap: Matplotlib colour map name.

    Returns:
        H x W x 3 float array in [0, 1].
    """
    import matplotlib

    heat = heat.detach().float().cpu().numpy() if isinstance(heat, torch.Tensor) else np.asarray(heat, np.float32)
    if heat.shape != image.shape[:2]:
        raise ValueError(f'heat must be {image.shape[:2]} like the image, got {heat.shape}')
    colours = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3]
    return np.clip((1.0 - alpha) * image + alpha * colours, 0.0, 1.0).astype(np.float32)


def _label(names: Optional[Sequence[str]], k: int) -> str:
    return str(names[k]) if names is not None and 0 <= k < len(names) else str(k)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return '\n'.join(textwrap.wrap(text, width=width, break_long_words=True)) or text


def cam_grid_size(num_images: int, num_models: int, panel_size: float = 1.8, dpi: int = 100) -> Tuple[int, int]:
    """(width, height) in pixels of the figure `render_cam_grid` writes.

    `round(panel_size * (1 + 2 * num_models + 0.35) * dpi)` wide (input, two panels per model, colour bar) and
    `round(panel_size * (1.3 * num_images + 0.25) * dpi)` high (a row per image with room for its titles, and a
    header naming the models).
    """
    return round(panel_size * (1 + 2 * num_models + 0.35) * dpi), round(panel_size * (1.3 * num_images + 0.25) * dpi)


def plot_cam_grid(
        images: Sequence[ImageLike],
        models: Dict[str, GGAMModel],
        classes: Optional[Sequence[int]] = None,
        label_names: Optional[Sequence[str]] = None,
        targets: Optional[Sequence[int]] = None,
        boxes: Optional[Sequence[Optional[Box]]] = None,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        panel_size: float = 1.8,
        dpi: int = 100,
        alpha: float = 0.5,
        cmap: str = 'jet',
        eval_mode: bool = True,
) -> Any:
    """Draw the figure of `render_cam_grid` and return the matplotlib `Figure` (not saved, no pyplot state).

    Layout: one row per image; column 0 the input (with its ground-truth `boxes` and `targets` if given), then two
    columns per model (named in a header), the Grad-CAM heat map and T overlaid on the image, each titled with the
    predicted label and its softmax score (green when it matches `targets`, red when not); a shared colour bar on
    the right. Saved at `dpi`, the figure is
    `cam_grid_size(len(images), len(models), panel_size, dpi)` pixels. Arguments as in `render_cam_grid`.
    """
    from matplotlib import colors as mcolors
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not models:
        raise ValueError('models must name at least one model')
    if len(images) == 0:
        raise ValueError('images must hold at least one image')
    for name, m in models.items():
        if not isinstance(m, GGAMModel):
            raise TypeError(f'models[{name!r}] must be a GGAMModel, got {type(m).__name__}')
    n = len(images)
    for arg, val in (('classes', classes), ('targets', targets), ('boxes', boxes)):
        if val is not None and len(val) != n:
            raise ValueError(f'{arg} must have one entry per image ({n}), got {len(val)}')
    size = _as_size(img_size) or _input_size(next(iter(models.values())))
    arrays = [load_image(im, size) for im in images]

    results = {}
    for name, m in models.items():
        x = _model_input(m, arrays)
        results[name] = cam_maps(m, x, None if classes is None else list(classes), eval_mode=eval_mode)

    ncols = 1 + 2 * len(models)
    cbar_w = 0.35
    width, height = cam_grid_size(n, len(models), panel_size, dpi)
    fig = Figure(figsize=((width + 0.5) / dpi, (height + 0.5) / dpi), dpi=dpi)  # + 0.5: savefig truncates
    h_in = panel_size * (1.3 * n + 0.25)
    gs = fig.add_gridspec(n, ncols + 1, width_ratios=[1.0] * ncols + [cbar_w * 0.4], left=0.01, right=0.965,
                          bottom=0.05 * panel_size / h_in, top=1.0 - 0.5 * panel_size / h_in, wspace=0.06, hspace=0.3)
    fs = max(5.0, 3.9 * panel_size)
    wrap = max(12, int(15 * panel_size))
    header_y = 1.0 - 0.1 * panel_size / h_in

    def header(col0: int, col1: int, text: str) -> None:
        x0 = gs[0, col0].get_position(fig).x0
        x1 = gs[0, col1].get_position(fig).x1
        fig.text((x0 + x1) / 2, header_y, text, ha='center', va='top', fontsize=fs * 1.25, weight='bold')

    header(0, 0, 'input')
    for j, name in enumerate(results):
        header(1 + 2 * j, 2 + 2 * j, name)
    for i, arr in enumerate(arrays):
        ax = fig.add_subplot(gs[i, 0])
        ax.imshow(arr, interpolation='nearest')
        true = None if targets is None or targets[i] is None or targets[i] < 0 else int(targets[i])
        title = '' if true is None else f'true: {_label(label_names, true)}'
        if boxes is not None and boxes[i] is not None:
            x0, y0, x1, y1 = boxes[i]
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec='white', lw=1.0, ls='--'))
            title += ' (dashed: part box)'
        ax.set_title(_wrap(title.strip(), wrap), fontsize=fs)
        ax.set_axis_off()
        for j, res in enumerate(results.values()):
            k, p = int(res.labels[i]), float(res.scores[i])
            pred = f'pred {_label(label_names, k)} ({p:.2f})'
            if classes is not None:
                pred += f'; map of {_label(label_names, int(res.classes[i]))}'
            colour = 'black' if true is None else ('darkgreen' if k == true else 'firebrick')
            for c, (kind, heat) in enumerate((('Grad-CAM', res.heatmap[i]), ('T', res.attention))):
                ax = fig.add_subplot(gs[i, 1 + 2 * j + c])
                if kind == 'T' and heat is None:
                    ax.imshow(arr.mean(2), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
                    ax.text(0.5, 0.5, 'no spatial\nattention', ha='center', va='center', fontsize=fs,
                            transform=ax.transAxes, color='white')
                else:
                    heat = heat if kind == 'Grad-CAM' else heat[i]
                    ax.imshow(overlay_heatmap(arr, heat, alpha, cmap), interpolation='nearest')
                ax.set_title(_wrap(f'{kind}: {pred}', wrap), fontsize=fs, color=colour)
                ax.set_axis_off()
    cax = fig.add_subplot(gs[:, ncols])
    bar = fig.colorbar(ScalarMappable(norm=mcolors.Normalize(0.0, 1.0), cmap=cmap), cax=cax)
    bar.ax.set_title('scaled\nper map', fontsize=fs * 0.9, loc='left')
    bar.ax.tick_params(labelsize=fs)
    return fig


def render_cam_grid(
        images: Sequence[ImageLike],
        models: Dict[str, GGAMModel],
        out_path: Union[str, Path],
        classes: Optional[Sequence[int]] = None,
        label_names: Optional[Sequence[str]] = None,
        targets: Optional[Sequence[int]] = None,
        boxes: Optional[Sequence[Optional[Box]]] = None,
        img_size: Optional[Union[int, Tuple[int, int]]] = None,
        panel_size: float = 1.8,
        dpi: int = 100,
        alpha: float = 0.5,
        cmap: str = 'jet',
        eval_mode: bool = True,
) -> Path:
    """Save a grid of Grad-CAM heat maps and spatial attention maps of several models (the paper's Fig. 3).

    Args:
        images: Image files, PIL images, H x W x 3 arrays or 3 x H x W tensors in [0, 1] (unnormalised).
        models: Column-group title -> GGAM model; each model normalises the images with its own data config.
        out_path: Output file (PNG, or any format matplotlib writes); its folder is created.
        classes: Class to explain per image; the predicted class when None.
        label_names: Class names for the titles; class indices when None.
        targets: Ground-truth class per image, shown in the input panel's title.
        boxes: Ground-truth box (x0, y0, x1, y1) per image in the resized image's pixels, drawn on the input.
        img_size: Size every image is resized to (int or (H, W)); the first model's data-config input size when None.
        panel_size: Width of one panel in inches.
        dpi: Pixels per inch: the image is `cam_grid_size(len(images), len(models), panel_size, dpi)` pixels.
        alpha: Opacity of the overlaid maps.
        cmap: Matplotlib colour map.
        eval_mode: See `cam_maps`.

    Returns:
        The path written.
    """
    fig = plot_cam_grid(images, models, classes=classes, label_names=label_names, targets=targets, boxes=boxes,
                        img_size=img_size, panel_size=panel_size, dpi=dpi, alpha=alpha, cmap=cmap,
                        eval_mode=eval_mode)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == '.png':  # RGB without the alpha channel matplotlib writes, optimised: a smaller file
        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=dpi)
        buf.seek(0)
        with Image.open(buf) as im:
            im.convert('RGB').save(out, optimize=True)
    else:
        fig.savefig(out, dpi=dpi)
    return out


# --- command line ------------------------------------------------------------------------------------------------
_SYNTHETIC = re.compile(r'^synthetic:(train|val|test):([0-9,\-]+)$')


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: Union[str, Path],
                   dpi: int = 100) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) as a PNG, each row as fractions of its images.

    Readable up to a few hundred classes: the figure grows with the classes (0.06 inch each, at least 6 inches),
    every class is labelled up to 60 classes, else every n-th, and counts are printed in the cells up to 20.
    """
    from matplotlib.figure import Figure

    m = np.asarray(confusion, dtype=np.float64)
    k = m.shape[0]
    rows = m / np.maximum(m.sum(1, keepdims=True), 1)
    side = max(6.0, 0.06 * k + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rows, cmap='viridis', vmin=0.0, vmax=1.0, interpolation='nearest')
    step = 1 if k <= 60 else int(np.ceil(k / 60))
    ticks = list(range(0, k, step))
    font = 8 if k <= 30 else 5
    ax.set_xticks(ticks)
    ax.set_xticklabels([_wrap(str(class_names[i]), 24) for i in ticks], rotation=90, fontsize=font)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(class_names[i]) for i in ticks], fontsize=font)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha='center', va='center', fontsize=7,
                            color='black' if rows[i, j] > 0.5 else 'white')
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
    acc = np.trace(m) / max(m.sum(), 1)
    ax.set_title(f'confusion matrix: {k} classes, top-1 {100 * acc:.2f}%')
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def load_cam_model(spec: str, pretrained: bool = True, device: Union[str, torch.device] = 'cpu') -> GGAMModel:
    """A GGAM model from a timm / registry name, an `hf-hub:` / `local-dir:` spec or a checkpoint directory.

    Args:
        spec: E.g. `ggam_test_resnet.synthetic`, `hf-hub:ORG/NAME`, `local-dir:PATH` or a directory holding
            `config.json` and `model.safetensors` (a training checkpoint).
        pretrained: Load the weights (False builds a freshly initialised model, for smoke tests).
        device: Where to put the model.
    """
    try:
        from . import hub
    except ImportError:  # pragma: no cover - ggam_layers.hub ships with the package
        hub = None
    if hub is not None and pretrained and Path(spec).is_dir():
        model = hub.load_checkpoint(spec)[0]  # a Hub-format folder or a training run folder
    elif hub is not None:
        model = hub.load_model(spec, pretrained=pretrained)
    else:
        import timm

        from . import registry  # noqa: F401  (registers the ggam_* entrypoints)
        model = timm.create_model(f'local-dir:{spec}' if Path(spec).is_dir() else spec, pretrained=pretrained)
    if not isinstance(model, GGAMModel):
        raise TypeError(f'--model {spec!r} is a {type(model).__name__}, not a GGAM model: wrap it with '
                        'wrap_timm_model or name a ggam_* model')
    return model.to(device).eval()


def _parse_indices(text: str) -> List[int]:
    out: List[int] = []
    for part in text.split(','):
        if '-' in part:
            a, b = part.split('-', 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _expand_images(specs: Sequence[str], num_classes: int, size: Tuple[int, int], seed: int, difficulty: float = 1.0):
    """Image specs to (images, targets, boxes, label_names); `synthetic:SPLIT:I,J-K` picks synthetic test images."""
    images: List[Any] = []
    targets: List[Optional[int]] = []
    boxes: List[Optional[Box]] = []
    names = None
    for spec in specs:
        m = _SYNTHETIC.match(spec)
        if m is None:
            if not Path(spec).is_file():
                raise ValueError(f'IMAGE {spec!r} is neither a file nor synthetic:SPLIT:INDICES '
                                 '(e.g. synthetic:test:0,1,5-7)')
            images.append(spec)
            targets.append(None)
            boxes.append(None)
            continue
        from .data.synthetic import SyntheticFineGrained

        if size[0] != size[1]:
            raise ValueError(f'synthetic images are square; --img-size must be one number, got {size}')
        ds = SyntheticFineGrained(m.group(1), num_classes=num_classes, image_size=size[0], seed=seed,
                                  difficulty=difficulty)
        names = list(ds.classes)
        for i in _parse_indices(m.group(2)):
            img, target = ds[i]
            images.append(img)
            targets.append(int(target))
            boxes.append(tuple(ds.part_box(i)))
    return images, targets, boxes, names


def _read_labels(path: Optional[str], model: GGAMModel) -> Optional[List[str]]:
    if path:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    return list(names) if names else None


def run_cam(args: argparse.Namespace) -> int:
    """The `cam` subcommand: load the models, draw the grid, save it."""
    device = torch.device(args.device)
    specs = [args.model] + list(args.compare or [])
    titles = list(args.titles or [])
    if titles and len(titles) != len(specs):
        raise ValueError(f'--titles needs one title per model ({len(specs)}), got {len(titles)}')
    models: Dict[str, GGAMModel] = {}
    for i, spec in enumerate(specs):
        title = titles[i] if titles else Path(spec.split(':', 1)[-1]).name or spec
        if title in models:
            title = f'{title} ({i})'
        models[title] = load_cam_model(spec, pretrained=not args.no_pretrained, device=device)
    first = next(iter(models.values()))
    size = _as_size(args.img_size) or _input_size(first)
    images, targets, boxes, names = _expand_images(args.images, first.num_classes, size, args.synthetic_seed,
                                                   args.synthetic_difficulty)
    label_names = _read_labels(args.labels, first) or names
    classes = None if args.target_class is None else [args.target_class] * len(images)
    out = render_cam_grid(
        images, models, args.out, classes=classes, label_names=label_names,
        targets=None if all(t is None for t in targets) else [-1 if t is None else t for t in targets],
        boxes=boxes if any(b is not None for b in boxes) else None, img_size=size, panel_size=args.panel_size,
        dpi=args.dpi)
    print(f'wrote {out}')
    return 0


def _add_cam_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('images', nargs='+', metavar='IMAGE',
                   help='image files, or synthetic:SPLIT:INDICES (e.g. synthetic:test:0,1,5-7) for images of the '
                        'synthetic dataset with their ground-truth part boxes')
    p.add_argument('--model', required=True, metavar='NAME_OR_CHECKPOINT',
                   help='a ggam_* name or tag (e.g. ggam_test_resnet.synthetic), hf-hub:ORG/NAME, local-dir:PATH or '
                        'a checkpoint directory with config.json and model.safetensors')
    p.add_argument('--compare', nargs='*', default=[], metavar='OTHER', help='more models, side by side')
    p.add_argument('--titles', nargs='*', default=[], metavar='TITLE', help='a column title per model')
    p.add_argument('--out', required=True, metavar='FILE.png', help='output figure')
    p.add_argument('--img-size', type=int, nargs='+', default=None, metavar='N',
                   help='resize images to N (or H W); default: the first model\'s input size')
    p.add_argument('--target-class', type=int, default=None, help='explain this class instead of the predicted one')
    p.add_argument('--labels', default=None, help='text file with one class name per line')
    p.add_argument('--synthetic-seed', type=int, default=0, help='seed of the synthetic dataset for synthetic: images')
    p.add_argument('--synthetic-difficulty', type=float, default=1.0, help='difficulty of the synthetic dataset')
    p.add_argument('--panel-size', type=float, default=1.8, help='panel width in inches')
    p.add_argument('--dpi', type=int, default=100)
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-pretrained', action='store_true', help='do not load weights (smoke tests)')


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `cam` subcommand to an argparse subparsers object; it sets `func=run_cam`."""
    p = subparsers.add_parser(
        'cam', help='Grad-CAM heat maps and spatial attention of GGAM models (the paper\'s Fig. 3)',
        description='For each image: the input, the Grad-CAM heat map at the GGAM head\'s input and the spatial '
                    'attention T of every model, side by side, with predicted labels and scores.')
    _add_cam_args(p)
    p.set_defaults(func=run_cam)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m ggam_layers.viz cam ...`, the same as `ggam-layers cam ...`."""
    parser = argparse.ArgumentParser(prog='python -m ggam_layers.viz')
    sub = parser.add_subparsers(dest='command', required=True)
    register_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    raise SystemExit(main())
