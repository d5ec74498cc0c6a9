"""Procedurally generated generic pretraining corpus (no download), disjoint from the synthetic fine-grained task.

Every image shows one object on a cluttered background. A class is a full-factorial combination of four attributes of
the object: its outline (ellipse, triangle, star, crescent), its body colour family (red, yellow, green, blue), its
part configuration (two disc-tipped knobs on top, two horns on top, or three spikes on the back) and its texture
(solid or striped): 4 x 4 x 3 x 2 = 96 classes. No attribute is redundant, so a backbone that names the class has to
detect all four: colour, small parts (their shape and where they sit on the object), outline and texture.

There is no bird, no eye ring, no wing bar, no beak and no crest, and no class is decided by the colour of a part:
part colours are nuisance, so the fine-grained task's deciding cue (wing-bar colour x eye-ring colour,
:class:`~ggam_layers.data.synthetic.SyntheticFineGrained`) never appears. ``docs/pretraining.md`` says why.

Nuisance variation: position, scale, rotation, horizontal flip, colour jitter inside the colour family, stripe angle
and width, part colours, background colour field and clutter, loose parts and striped patches scattered over the
background away from the object, partial occlusion, lighting and pixel noise.

Images are generated lazily from a per-index random stream seeded by ``(seed, split, index)`` (plus a tag that keeps
the streams apart from the fine-grained set's) and cached in memory, so the corpus is deterministic and needs no files.
"""

import hashlib
import math
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from . import synthetic as _fg
from .synthetic import (
    Box,
    SyntheticDataset,
    bounding_box,
    box_union,
    ellipse_points,
    flat_coords,
    hsv_to_rgb,
    rotation_matrix,
    scale_color,
)

__all__ = [
    'SyntheticPretrain',
    'PRETRAIN_SPLITS',
    'PRETRAIN_SHAPES',
    'PRETRAIN_COLORS',
    'PRETRAIN_PARTS',
    'PRETRAIN_TEXTURES',
    'PRETRAIN_NUM_CLASSES',
    'PRETRAIN_GENERATOR_PARAMS',
    'pretrain_class_table',
    'pretrain_generator_params',
]

PRETRAIN_SPLITS = ('train', 'val', 'test')
_STREAM_TAG = 0x505254  # 'PRT': keeps every random stream apart from SyntheticFineGrained's for the same seed
_DEFAULT_SAMPLES_PER_CLASS = {'train': 64, 'val': 16, 'test': 20}

PRETRAIN_SHAPES = ('ellipse', 'triangle', 'star', 'crescent')
# body colour families: hue centre on [0, 1); each image jitters the hue inside the family and draws saturation / value
PRETRAIN_COLORS: Dict[str, float] = {'red': 0.0, 'yellow': 0.15, 'green': 0.34, 'blue': 0.62}
PRETRAIN_PARTS = ('knobs', 'horns', 'spikes')
PRETRAIN_TEXTURES = ('solid', 'striped')
PRETRAIN_NUM_CLASSES = len(PRETRAIN_SHAPES) * len(PRETRAIN_COLORS) * len(PRETRAIN_PARTS) * len(PRETRAIN_TEXTURES)

# the SyntheticPretrain attributes that decide its images (transforms and the in-memory cache do not)
PRETRAIN_GENERATOR_PARAMS = ('split', 'num_classes', 'samples_per_class', 'image_size', 'seed', 'difficulty',
                             'num_distractors', 'occlusion_prob', 'part_scale')

_HUE_JITTER = 0.035


def pretrain_class_table(num_classes: int = PRETRAIN_NUM_CLASSES) -> List[Dict[str, str]]:
    """The attributes of the first ``num_classes`` classes, in label order.

    Labels run over the product shape x colour x parts x texture with the texture fastest, then the parts, the colour
    and the shape, so a prefix of 24 classes holds every colour, part configuration and texture on one shape.

    Args:
        num_classes: Number of classes, 2 to 96.

    Returns:
        One dict per class with the keys 'shape', 'colour', 'parts' and 'texture'.
    """
    if not isinstance(num_classes, int) or not 2 <= num_classes <= PRETRAIN_NUM_CLASSES:
        raise ValueError(f'num_classes must be an int in [2, {PRETRAIN_NUM_CLASSES}], got {num_classes!r}')
    table = []
    for label in range(num_classes):
        rest, t = divmod(label, len(PRETRAIN_TEXTURES))
        rest, p = divmod(rest, len(PRETRAIN_PARTS))
        s, c = divmod(rest, len(PRETRAIN_COLORS))
        table.append({'shape': PRETRAIN_SHAPES[s], 'colour': list(PRETRAIN_COLORS)[c], 'parts': PRETRAIN_PARTS[p],
                      'texture': PRETRAIN_TEXTURES[t]})
    return table


def _class_name(attrs: Dict[str, str]) -> str:
    return f'{attrs["texture"]} {attrs["colour"]} {attrs["shape"]} with {attrs["parts"]}'


# ---------------------------------------------------------------------------------------------------- geometry
def _regular_star(points: int, outer: float, inner: float, phase: float) -> np.ndarray:
    t = phase + np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _crescent() -> np.ndarray:
    # outer circle r=1 at the origin minus a circle r=0.8 at (0.5, 0): the outer arc on the left, the inner arc back
    a = math.acos(0.61)
    outer = np.linspace(a, 2 * math.pi - a, 28)
    b = math.atan2(0.79, 0.11)
    inner = np.linspace(2 * math.pi - b, b, 18)
    return np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                           np.stack([0.5 + 0.8 * np.cos(inner), 0.8 * np.sin(inner)], 1)])


# outlines in object units (x right, y down, about [-1, 1]^2), centred on their area
_SHAPES: Dict[str, np.ndarray] = {
    'ellipse': ellipse_points(0.0, 0.0, 1.0, 0.66, 0.0, n=32),
    'triangle': np.array([[0.0, -0.95], [1.0, 0.72], [-1.0, 0.72]]),
    'star': _regular_star(5, 1.05, 0.48, -math.pi / 2),
    'crescent': _crescent() + np.array([0.25, 0.0]),
}
# where each part configuration sits: directions (radians, 0 = +x, -pi/2 = up) of its anchors on the outline
_PART_ANGLES: Dict[str, Tuple[float, ...]] = {
    'knobs': (-math.pi / 2 - 0.5, -math.pi / 2 + 0.5),
    'horns': (-math.pi / 2 - 0.5, -math.pi / 2 + 0.5),
    'spikes': (math.pi - 0.6, math.pi, math.pi + 0.6),  # the back (left; the crescent's outer side)
}


def _ray_exit(poly: np.ndarray, angle: float) -> float:
    """Distance from the origin to the farthest crossing of the outline along ``angle`` (1.0 if none)."""
    d = np.array([math.cos(angle), math.sin(angle)])
    p, q = poly, np.roll(poly, -1, axis=0)
    e = q - p
    den = d[0] * e[:, 1] - d[1] * e[:, 0]
    ok = np.abs(den) > 1e-12
    t = np.where(ok, (p[:, 0] * e[:, 1] - p[:, 1] * e[:, 0]) / np.where(ok, den, 1.0), -1.0)
    s = np.where(ok, (p[:, 0] * d[1] - p[:, 1] * d[0]) / np.where(ok, den, 1.0), -1.0)
    hit = ok & (t > 0) & (s >= 0) & (s <= 1)
    return float(t[hit].max()) if hit.any() else 1.0


_ANCHORS: Dict[Tuple[str, str], np.ndarray] = {
    (shape, parts): np.array([[a, _ray_exit(poly, a)] for a in angles])
    for shape, poly in _SHAPES.items() for parts, angles in _PART_ANGLES.items()
}


def _part_polys(kind: str, angle: float, r: float, ps: float) -> List[Tuple[str, np.ndarray]]:
    """The polygons ('stem' lines and 'head' polygons) of one part anchored at polar (r, angle), object units."""
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-u[1], u[0]])
    base = u * r
    if kind == 'knobs':  # a thin stem out of the outline with a disc at its tip
        tip = base + u * 0.34 * ps
        disc = ellipse_points(tip[0], tip[1], 0.13 * ps, 0.13 * ps, 0.0, n=14)
        return [('stem', np.stack([base - u * 0.08, tip])), ('head', disc)]
    # horns: tall pointed triangles (at the knobs' anchors); spikes: short wide ones
    height, half = (0.42, 0.12) if kind == 'horns' else (0.26, 0.13)
    foot = base - u * 0.07
    return [('head', np.stack([foot - v * half * ps, base + u * height * ps, foot + v * half * ps]))]


def _source_md5(module: Any) -> str:
    return hashlib.md5(Path(sys.modules[module.__name__].__file__).read_bytes()).hexdigest()


def pretrain_generator_params(ds: 'SyntheticPretrain') -> Dict[str, Any]:
    """Every parameter that decides the images of ``ds``: its :data:`PRETRAIN_GENERATOR_PARAMS`, the generator's name
    and the md5 of its source and of the fine-grained generator's (whose drawing helpers it uses)."""
    if not isinstance(ds, SyntheticPretrain):
        raise TypeError(f'ds must be a SyntheticPretrain, got {type(ds).__name__}')
    params: Dict[str, Any] = {k: getattr(ds, k) for k in PRETRAIN_GENERATOR_PARAMS}
    params['generator'] = type(ds).__name__
    params['generator_md5'] = _source_md5(sys.modules[__name__]) + _source_md5(_fg)
    return params


class SyntheticPretrain(SyntheticDataset):
    """Generic synthetic pretraining corpus: shape x colour x part configuration x texture, 96 classes.

    Args:
        split: One of 'train', 'val', 'test'. Each split uses its own random stream, so splits never share images.
        num_classes: Number of classes, 2 to 96 (the first ones of :func:`pretrain_class_table`).
        samples_per_class: Images per class; None picks 64 (train: 6144 images), 16 (val) or 20 (test: 1920).
        image_size: Output height and width in pixels (default 112, the resolution the shipped backbone is
            pretrained at).
        seed: Sample seed. The class definitions do not depend on it.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        difficulty: Nuisance strength (clutter, distractors, pose, placement, occlusion, colour jitter, noise); 0.0
            gives clean centred objects on a plain background, 1.0 the full nuisance range. The default 0.6 keeps
            the background cluttered while a tiny backbone still learns the shapes within a CPU budget (at 1.0 a
            short pretraining learns colour and texture but barely the shapes: ``docs/pretraining.md``).
        num_distractors: Mean number of loose parts and striped patches in the background at difficulty 1 (scaled).
        occlusion_prob: Probability of an occluder (branch or leaf) over the object at difficulty 1 (scaled by it).
        part_scale: Size multiplier of the parts.
        cache: Keep generated images in memory (about image_size**2 * 3 bytes per image).

    The labels are ``index % num_classes``, so every prefix of the dataset is nearly class-balanced.
    """

    _DEFAULT_SAMPLES_PER_CLASS = _DEFAULT_SAMPLES_PER_CLASS
    _STREAM_TAG = (_STREAM_TAG,)  # the module constant, as the seed words after the index

    def __init__(
        self,
        split: str = 'train',
        num_classes: int = PRETRAIN_NUM_CLASSES,
        samples_per_class: Optional[int] = None,
        image_size: int = 112,
        seed: int = 0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        difficulty: float = 0.6,
        num_distractors: float = 4.0,
        occlusion_prob: float = 0.3,
        part_scale: float = 1.0,
        cache: bool = True,
    ) -> None:
        super().__init__(split, num_classes, samples_per_class, image_size, seed, transform, target_transform,
                         difficulty, num_distractors, occlusion_prob, part_scale, cache)

    def _class_table(self, num_classes: int) -> List[Dict[str, str]]:
        return pretrain_class_table(num_classes)  # checks num_classes

    @staticmethod
    def _class_name(attrs: Dict[str, str]) -> str:
        return _class_name(attrs)

    def annotation(self, index: int) -> Dict[str, Any]:
        """Ground truth of one sample in output pixels: 'label', 'center' (x, y), 'object_box' and 'part_box' (union
        of the parts), boxes as (x0, y0, x1, y1) clipped to the image."""
        return self.generate(index)[1]

    # ------------------------------------------------------------------ rendering
    def _render(self, rng: np.random.Generator, label: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        attrs = self.class_attributes[label]
        d = self.difficulty
        dm = min(d, 1.0)
        ss = 2  # supersampling factor: drawn at 2x, then downsampled (antialiasing)
        size = self.image_size * ss

        # background: low-frequency colour field + clutter (any colour, including the body colour families)
        base = np.array(hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.85))) / 255.0
        field = np.clip((base + dm * rng.uniform(-0.25, 0.25, size=(4, 4, 3))) * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(field).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.poisson(6.0 * d)):
            col = hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.9))
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(0.04, 0.2) * size
            if rng.random() < 0.5:
                draw.polygon(flat_coords(ellipse_points(x, y, r, r * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi),
                                                        n=12)), fill=col)
            else:
                a = rng.uniform(0, math.pi)
                draw.line([(x - r * math.cos(a), y - r * math.sin(a)), (x + r * math.cos(a), y + r * math.sin(a))],
                          fill=col, width=max(1, int(rng.uniform(0.01, 0.04) * size)))

        # pose, scale and placement (nuisance)
        ps = self.part_scale
        R = rng.uniform(0.3 - 0.07 * dm, 0.3 + 0.04 * dm) * size  # object radius in pixels
        theta = rng.uniform(-1, 1) * math.radians(35) * min(d, 1.5)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        lin = rotation_matrix(theta) * np.array([flip, 1.0]) * R  # object units -> pixel offset from the object centre

        outline = _SHAPES[attrs['shape']]
        anchors = _ANCHORS[(attrs['shape'], attrs['parts'])]
        parts = [pp for a, r in anchors for pp in _part_polys(attrs['parts'], a, r, ps)]
        extent = np.concatenate([outline] + [q for _, q in parts]) @ lin.T
        lo, hi = -extent.min(0), size - extent.max(0)
        mid = np.where(lo <= hi, (lo + hi) / 2, size / 2)
        half = np.where(lo <= hi, (hi - lo) / 2, 0.0)
        cx, cy = (mid + dm * rng.uniform(-1, 1, size=2) * half).tolist()
        offset = np.array([cx, cy])

        def tf(pts: np.ndarray) -> np.ndarray:
            return np.atleast_2d(pts) @ lin.T + offset

        # loose parts and striped patches in the background, away from the object
        for _ in range(rng.poisson(self.num_distractors * d)):
            for _try in range(10):
                x, y = rng.uniform(0.04 * size, 0.96 * size, 2)
                if math.hypot(x - cx, y - cy) > 1.45 * R:
                    break
            else:
                continue
            self._draw_distractor(img, draw, rng, x, y, R, ps)

        # the object: parts behind the body, the body, its texture
        body = self._body_colour(rng, attrs['colour'], dm)
        part_col = hsv_to_rgb(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.95))
        part_boxes = []
        for kind, q in parts:
            qq = tf(q)
            part_boxes.append(bounding_box(qq))
            if kind == 'stem':
                draw.line(flat_coords(qq), fill=part_col, width=max(1, int(0.06 * R)))
            else:
                draw.polygon(flat_coords(qq), fill=part_col)
        body_pts = tf(outline)
        draw.polygon(flat_coords(body_pts), fill=body)
        if attrs['texture'] == 'striped':
            shade = (scale_color(body, rng.uniform(0.35, 0.6)) if rng.random() < 0.5
                     else scale_color(body, rng.uniform(1.35, 1.7)))
            self._stripes(img, body_pts, shade, rng.uniform(0, math.pi), rng.uniform(0.28, 0.42) * R)

        # occlusion (may hide parts, which caps the achievable accuracy)
        if rng.random() < min(1.0, self.occlusion_prob * d):
            occ_col = hsv_to_rgb(rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6))
            target = tf(rng.uniform([-0.7, -0.7], [0.7, 0.7]))[0]
            if rng.random() < 0.5:  # branch across the image
                a = rng.uniform(0, math.pi)
                draw.line([(target[0] - size * math.cos(a), target[1] - size * math.sin(a)),
                           (target[0] + size * math.cos(a), target[1] + size * math.sin(a))],
                          fill=occ_col, width=max(1, int(rng.uniform(0.12, 0.28) * R)))
            else:  # leaf
                r = rng.uniform(0.3, 0.6) * R
                draw.polygon(flat_coords(ellipse_points(target[0], target[1], r, 0.45 * r, rng.uniform(0, math.pi),
                                                        n=16)), fill=occ_col)

        # lighting and noise
        out = np.asarray(img.resize((self.image_size, self.image_size), Image.BOX), dtype=np.float32)
        out = out * (1.0 + min(d, 1.5) * rng.uniform(-0.2, 0.2)) + min(d, 1.5) * rng.uniform(-20, 20)
        sigma = 6.0 * d
        if sigma > 0:
            ox, oy = rng.integers(0, self.image_size, size=2).tolist()
            out += sigma * self._noise_bank()[oy:oy + self.image_size, ox:ox + self.image_size]
        out = np.clip(out, 0, 255).astype(np.uint8)

        lim = float(self.image_size)

        def to_out(b: Box) -> Box:
            x0, y0, x1, y1 = (min(lim, max(0.0, v / ss)) for v in b)
            return x0, y0, x1, y1

        ann = {
            'label': label,
            'center': (float(min(lim, max(0.0, cx / ss))), float(min(lim, max(0.0, cy / ss)))),
            'object_box': to_out(bounding_box(body_pts)),
            'part_box': to_out(box_union(part_boxes)),
        }
        return out, ann

    @staticmethod
    def _body_colour(rng: np.random.Generator, family: str, dm: float) -> Tuple[int, int, int]:
        hue = (PRETRAIN_COLORS[family] + rng.uniform(-1, 1) * _HUE_JITTER * max(dm, 0.3)) % 1.0
        return hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.6, 0.95))

    @staticmethod
    def _stripes(img: Image.Image, poly: np.ndarray, colour: Tuple[int, int, int], angle: float,
                 period: float) -> None:
        """Paint parallel stripes of ``colour`` inside the polygon ``poly`` (pixels) of ``img``."""
        x0, y0, x1, y1 = (int(v) for v in (max(0, poly[:, 0].min() - 1), max(0, poly[:, 1].min() - 1),
                                           min(img.width, poly[:, 0].max() + 2), min(img.height, poly[:, 1].max() + 2)))
        if x1 <= x0 or y1 <= y0:
            return
        w, h = x1 - x0, y1 - y0
        inside = Image.new('L', (w, h), 0)
        ImageDraw.Draw(inside).polygon(flat_coords(poly - (x0, y0)), fill=255)
        bands = Image.new('L', (w, h), 0)
        bd = ImageDraw.Draw(bands)
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        c = np.array([w / 2, h / 2])
        reach = math.hypot(w, h)
        for k in np.arange(-reach, reach, period):
            a = c + v * k
            b = a + v * period / 2
            band = np.stack([a - u * reach, a + u * reach, b + u * reach, b - u * reach])
            bd.polygon(flat_coords(band), fill=255)
        img.paste(colour, (x0, y0, x1, y1), ImageChops.multiply(inside, bands))

    def _draw_distractor(self, img: Image.Image, draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float,
                         y: float, R: float, ps: float) -> None:
        col = hsv_to_rgb(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.95))
        kind = int(rng.integers(4))
        a = rng.uniform(0, 2 * math.pi)
        lin = rotation_matrix(a) * R
        centre = np.array([x, y])
        if kind < 3:  # a loose knob, horn or spike
            for what, q in _part_polys(PRETRAIN_PARTS[kind], 0.0, 0.0, ps):
                qq = q @ lin.T + centre
                if what == 'stem':
                    draw.line(flat_coords(qq), fill=col, width=max(1, int(0.06 * R)))
                else:
                    draw.polygon(flat_coords(qq), fill=col)
        else:  # a small striped patch
            patch = ellipse_points(x, y, 0.35 * R, 0.25 * R, a, n=14)
            draw.polygon(flat_coords(patch), fill=col)
            self._stripes(img, patch, scale_color(col, 0.5), rng.uniform(0, math.pi), rng.uniform(0.28, 0.42) * R)
