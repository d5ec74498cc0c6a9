"""Procedurally generated fine-grained dataset (no download).

Every image shows one bird-like figure (body, head, tail, wing, legs) on a cluttered background. All classes share
the figure; a class is decided only by small parts: the class is a (wing-bar colour, eye-ring colour) pair, and the
beak shape (short / long / hooked) and the crest (plain / crested) follow from that pair as redundant cues. Classes
that share a wing bar differ in the eye ring (and usually in beak or crest), and vice versa.

Nuisance variation is larger than the class signal: position, scale, rotation, horizontal flip, head / tail / wing
pose, body colour, background colour and clutter, partial occlusion, lighting and pixel noise. Distractors (eye rings,
wing bars, beaks and crests drawn with the same palettes) are scattered over the background away from the figure, so
only the parts ON the figure decide the label.

Images are generated lazily from a per-index random stream seeded by ``(seed, split, index)`` and cached in memory,
so a dataset is deterministic, needs no files and the splits never share a stream.
"""

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.utils.data
from PIL import Image, ImageDraw

__all__ = [
    'SyntheticFineGrained', 'SYNTHETIC_SPLITS', 'BEAK_SHAPES', 'PART_COLORS', 'Box', 'SyntheticDataset',
    'rotation_matrix', 'ellipse_points', 'flat_coords', 'bounding_box', 'box_union', 'hsv_to_rgb', 'scale_color',
]

SYNTHETIC_SPLITS = ('train', 'val', 'test')
_SPLIT_CODE = {'train': 0, 'val': 1, 'test': 2}
_DEFAULT_SAMPLES_PER_CLASS = {'train': 100, 'val': 25, 'test': 50}

BEAK_SHAPES = ('short', 'long', 'hooked')
CREST_TYPES = ('plain', 'crested')
# Part palette shared by the eye ring, the wing bar and the background distractors.
PART_COLORS: Dict[str, Tuple[int, int, int]] = {
    'red': (215, 35, 35),
    'yellow': (240, 215, 40),
    'blue': (40, 90, 225),
    'white': (240, 240, 240),
    'orange': (245, 135, 25),
    'cyan': (35, 205, 215),
    'magenta': (205, 45, 195),
    'lime': (125, 225, 45),
}
_MAX_CLASSES = len(PART_COLORS) ** 2

Box = Tuple[float, float, float, float]

# part shapes in head units (x towards the beak, y down)
_CREST = np.array(
    [[-0.09, -0.1], [-0.06, -0.3], [-0.01, -0.13], [0.03, -0.32], [0.05, -0.13], [0.12, -0.26], [0.1, -0.08]]
)
_BEAKS = {
    'short': np.array([[0.14, -0.055], [0.26, 0.0], [0.14, 0.055]]),
    'long': np.array([[0.14, -0.028], [0.42, 0.01], [0.14, 0.028]]),
    'hooked': np.array([[0.14, -0.05], [0.26, -0.03], [0.3, 0.03], [0.27, 0.1], [0.24, 0.03], [0.14, 0.05]]),
}


def rotation_matrix(angle: float) -> np.ndarray:
    """The 2x2 matrix rotating by `angle` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]], dtype=np.float64)


_UNIT_CIRCLES: Dict[int, np.ndarray] = {}


def ellipse_points(cx: float, cy: float, ax: float, ay: float, angle: float = 0.0, n: int = 20) -> np.ndarray:
    """`n` points (n x 2) on the ellipse centred at (cx, cy) with semi-axes ax, ay, rotated by `angle`."""
    circle = _UNIT_CIRCLES.get(n)
    if circle is None:
        t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
        circle = _UNIT_CIRCLES[n] = np.stack([np.cos(t), np.sin(t)], axis=1)
    pts = circle * (ax, ay)
    if angle:
        pts = pts @ rotation_matrix(angle).T
    return pts + (cx, cy)


def flat_coords(pts: np.ndarray) -> List[float]:
    """Points (n x 2) as the flat [x0, y0, x1, y1, ...] list PIL's ImageDraw takes."""
    return pts.ravel().tolist()


def bounding_box(pts: np.ndarray) -> Box:
    """The (x0, y0, x1, y1) box around points (n x 2)."""
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def box_union(boxes: Sequence[Box]) -> Box:
    """The smallest box holding every box of `boxes`."""
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def hsv_to_rgb(h: float, s: float, v: float) -> Tuple[int, int, int]:
    """An HSV colour (each in [0, 1]) as 8-bit RGB."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _jitter(color: Sequence[int], rng: np.random.Generator, amount: float) -> Tuple[int, int, int]:
    delta = rng.uniform(-amount, amount, size=3).tolist()
    return tuple(int(min(255.0, max(0.0, c + e))) for c, e in zip(color, delta))


def scale_color(color: Sequence[int], f: float) -> Tuple[int, int, int]:
    """`color` with each channel times `f`, clipped to 0..255 (darker below 1, lighter above)."""
    return tuple(int(min(255, max(0, v * f))) for v in color)


class SyntheticDataset(torch.utils.data.Dataset):
    """What the synthetic generators share: argument checks, labels, per-index random streams and the image cache.

    A subclass sets `_DEFAULT_SAMPLES_PER_CLASS` and `_STREAM_TAG` (seed words that keep its streams apart from the
    other generators'), and provides `_class_table` (which checks num_classes), `_class_name` and `_render`.
    """

    _DEFAULT_SAMPLES_PER_CLASS: Dict[str, int] = {}
    _STREAM_TAG: Tuple[int, ...] = ()
    _noise: Optional[np.ndarray] = None

    def __init__(
        self,
        split: str,
        num_classes: int,
        samples_per_class: Optional[int],
        image_size: int,
        seed: int,
        transform: Optional[Callable],
        target_transform: Optional[Callable],
        difficulty: float,
        num_distractors: float,
        occlusion_prob: float,
        part_scale: float,
        cache: bool,
    ) -> None:
        if split not in _SPLIT_CODE:
            raise ValueError(f'split must be one of {SYNTHETIC_SPLITS}, got {split!r}')
        class_attributes = self._class_table(num_classes)
        if samples_per_class is None:
            samples_per_class = self._DEFAULT_SAMPLES_PER_CLASS[split]
        if not isinstance(samples_per_class, int) or samples_per_class < 1:
            raise ValueError(f'samples_per_class must be a positive int, got {samples_per_class!r}')
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f'image_size must be an int >= 16, got {image_size!r}')
        if not difficulty >= 0:  # NaN too
            raise ValueError(f'difficulty must be >= 0, got {difficulty!r}')
        if not num_distractors >= 0:
            raise ValueError(f'num_distractors must be >= 0, got {num_distractors!r}')
        if not 0.0 <= occlusion_prob <= 1.0:
            raise ValueError(f'occlusion_prob must be in [0, 1], got {occlusion_prob!r}')
        if not part_scale > 0:
            raise ValueError(f'part_scale must be > 0, got {part_scale!r}')
        self.split = split
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.image_size = image_size
        self.seed = int(seed)
        self.transform = transform
        self.target_transform = target_transform
        self.difficulty = float(difficulty)
        self.num_distractors = float(num_distractors)
        self.occlusion_prob = float(occlusion_prob)
        self.part_scale = float(part_scale)
        self.cache = cache

        self.class_attributes = class_attributes
        self.classes = [self._class_name(a) for a in class_attributes]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self._length = num_classes * samples_per_class
        self.targets = [i % num_classes for i in range(self._length)]
        self._images: Dict[int, np.ndarray] = {}
        self._annotations: Dict[int, Dict[str, Any]] = {}

    def _class_table(self, num_classes: int) -> List[Dict[str, str]]:
        """The attributes of each class in label order; raises ValueError for an unsupported `num_classes`."""
        raise NotImplementedError

    @staticmethod
    def _class_name(attrs: Dict[str, str]) -> str:
        """The human-readable name of the class with attributes `attrs`."""
        raise NotImplementedError

    def _render(self, rng: np.random.Generator, label: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Draw one image of class `label` from the random stream `rng`: the HxWx3 uint8 image and its annotation."""
        raise NotImplementedError

    @property
    def class_names(self) -> List[str]:
        """Human-readable class names (same as ``classes``)."""
        return self.classes

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Tuple[Any, Any]:
        img = Image.fromarray(self.generate(index)[0])
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f'index {index} out of range for dataset of length {self._length}')
        return index

    def _rng(self, *words: int) -> np.random.Generator:
        """The random stream seeded by (seed, split, *words) and the generator's `_STREAM_TAG`."""
        return np.random.default_rng([self.seed, _SPLIT_CODE[self.split], *words, *self._STREAM_TAG])

    def generate(self, index: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        """Generate (or fetch from the cache) one sample.

        Args:
            index: Sample index.

        Returns:
            The HxWx3 uint8 image and its annotation dict (see :meth:`annotation`).
        """
        index = self._check_index(index)
        if index in self._images:
            return self._images[index], self._annotations[index]
        img, ann = self._render(self._rng(index), self.targets[index])
        if self.cache:
            self._images[index] = img
            self._annotations[index] = ann
        return img, ann

    def annotation(self, index: int) -> Dict[str, Any]:
        """Ground truth of sample ``index`` (the annotation dict of :meth:`generate`)."""
        return self.generate(index)[1]

    def materialize(self) -> np.ndarray:
        """Generate every sample and return them stacked as an NxHxWx3 uint8 array."""
        return np.stack([self.generate(i)[0] for i in range(self._length)])

    def extra_repr(self) -> str:
        return f'split={self.split}, num_classes={self.num_classes}, size={self.image_size}, seed={self.seed}'

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.extra_repr()}, len={self._length})'

    def _noise_bank(self) -> np.ndarray:
        # one fixed standard-normal field per dataset; each image takes a random crop of it (much faster than
        # drawing fresh noise per image)
        if self._noise is None:
            n = 2 * self.image_size
            self._noise = self._rng(2**31).standard_normal(size=(n, n, 3), dtype=np.float32)
        return self._noise


class SyntheticFineGrained(SyntheticDataset):
    """Synthetic fine-grained bird-like dataset whose classes differ only in small parts.

    Args:
        split: One of 'train', 'val', 'test'. Each split uses its own random stream, so splits never share images.
        num_classes: Number of classes, 2 to 64 (wing-bar colour x eye-ring colour pairs).
        samples_per_class: Images per class; None picks 100 (train), 25 (val) or 50 (test).
        image_size: Output height and width in pixels.
        seed: Sample seed. The class definitions do not depend on it.
        transform: Optional transform applied to the PIL image.
        target_transform: Optional transform applied to the integer label.
        difficulty: Nuisance strength (distractors, clutter, pose, placement, occlusion, colour jitter, noise).
            0.0 gives clean centred figures on a plain background, 1.0 the full nuisance range. The default 0.7 is
            calibrated so that a plain resnet10t trained from scratch (64 px, 2000 images, 8 epochs) reaches about
            50% test top-1 (0.4: about 88%).
        num_distractors: Mean number of part-like distractors in the background at difficulty 1 (scaled by it).
        occlusion_prob: Probability of an occluder (branch or leaf) over the figure at difficulty 1 (scaled by it).
        part_scale: Size multiplier of the class-deciding parts.
        cache: Keep generated images in memory (about image_size**2 * 3 bytes per image).

    The labels are ``index % num_classes``, so every prefix of the dataset is nearly class-balanced.
    Ground truth for attention maps is available through :meth:`annotation`, :meth:`part_box` and
    :meth:`object_center`.
    """

    _DEFAULT_SAMPLES_PER_CLASS = _DEFAULT_SAMPLES_PER_CLASS

    def __init__(
        self,
        split: str = 'train',
        num_classes: int = 20,
        samples_per_class: Optional[int] = None,
        image_size: int = 64,
        seed: int = 0,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        difficulty: float = 0.7,
        num_distractors: float = 4.0,
        occlusion_prob: float = 0.3,
        part_scale: float = 1.0,
        cache: bool = True,
    ) -> None:
        super().__init__(split, num_classes, samples_per_class, image_size, seed, transform, target_transform,
                         difficulty, num_distractors, occlusion_prob, part_scale, cache)

    @property
    def label_names(self) -> List[str]:
        """Alias of ``class_names``."""
        return self.classes

    def _class_table(self, num_classes: int) -> List[Dict[str, str]]:
        if not isinstance(num_classes, int) or not 2 <= num_classes <= _MAX_CLASSES:
            raise ValueError(f'num_classes must be an int in [2, {_MAX_CLASSES}], got {num_classes!r}')
        class_attributes, self._palette = self._make_classes(num_classes)
        return class_attributes

    @staticmethod
    def _class_name(attrs: Dict[str, str]) -> str:
        return f'{attrs["beak"]}-beak {attrs["crest"]} {attrs["eye_ring"]}-eye-ring {attrs["wing_bar"]}-wing-bar'

    @staticmethod
    def _make_classes(num_classes: int) -> Tuple[List[Dict[str, str]], List[str]]:
        # A class is a (wing-bar colour, eye-ring colour) pair; beak shape and crest follow from the pair, so they
        # are redundant cues (classes sharing a wing bar differ in eye ring and usually in beak or crest too).
        n_eye = int(math.isqrt(num_classes))
        n_wing = -(-num_classes // n_eye)
        palette = list(PART_COLORS)
        classes = []
        for label in range(num_classes):
            w, e = divmod(label, n_eye)
            classes.append(
                {
                    'beak': BEAK_SHAPES[(w + e) % len(BEAK_SHAPES)],
                    'crest': CREST_TYPES[(w + 2 * e) % len(CREST_TYPES)],
                    'eye_ring': palette[e],
                    'wing_bar': palette[w],
                }
            )
        return classes, palette[: max(n_eye, n_wing)]

    def annotation(self, index: int) -> Dict[str, Any]:
        """Ground truth of one sample, in output pixel coordinates (x right, y down).

        Args:
            index: Sample index.

        Returns:
            Dict with 'label', 'center' (x, y) of the body, 'object_box', 'part_box' (union of the class-deciding
            parts) and 'part_boxes' (a box per part: 'beak', 'crest' (region where a crest is or would be),
            'eye_ring', 'wing_bar'). Boxes are (x0, y0, x1, y1) clipped to the image.
        """
        return self.generate(index)[1]

    def part_box(self, index: int) -> Box:
        """Box (x0, y0, x1, y1) in pixels enclosing all class-deciding parts of sample ``index``."""
        return self.annotation(index)['part_box']

    def part_boxes(self, index: int) -> Dict[str, Box]:
        """Per-part boxes (x0, y0, x1, y1) in pixels of sample ``index``."""
        return self.annotation(index)['part_boxes']

    def object_center(self, index: int) -> Tuple[float, float]:
        """Centre (x, y) in pixels of the figure's body in sample ``index``."""
        return self.annotation(index)['center']

    # ------------------------------------------------------------------ rendering
    def _render(self, rng: np.random.Generator, label: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        attrs = self.class_attributes[label]
        d = self.difficulty
        ss = 2  # supersampling factor, the image is drawn at 2x and downsampled (antialiasing)
        size = self.image_size * ss

        # background: low frequency colour field + clutter
        base = np.array(hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.35, 0.85))) / 255.0
        field = base + min(1.0, d) * rng.uniform(-0.25, 0.25, size=(4, 4, 3))
        field = np.clip(field * 255.0, 0, 255).astype(np.uint8)
        img = Image.fromarray(field).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        n_clutter = rng.poisson(6.0 * d)
        for _ in range(n_clutter):
            col = hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.9))
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(0.04, 0.2) * size
            if rng.random() < 0.5:
                pts = ellipse_points(x, y, r, r * rng.uniform(0.3, 1.0), rng.uniform(0, math.pi), n=12)
                draw.polygon(flat_coords(pts), fill=col)
            else:
                a = rng.uniform(0, math.pi)
                draw.line(
                    [(x - r * math.cos(a), y - r * math.sin(a)), (x + r * math.cos(a), y + r * math.sin(a))],
                    fill=col,
                    width=max(1, int(rng.uniform(0.01, 0.04) * size)),
                )

        # figure geometry in body units (x forward, y down), then pose, scale and placement (nuisance)
        ps = self.part_scale
        L = rng.uniform(0.5 - 0.12 * min(d, 1.0), 0.5 + 0.1 * min(d, 1.0)) * size  # body length in pixels
        theta = rng.uniform(-1, 1) * math.radians(35) * min(d, 1.5)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        head_angle = rng.uniform(-1, 1) * math.radians(25) * min(d, 1.5)
        tail_angle = rng.uniform(-1, 1) * math.radians(20) * min(d, 1.0)
        wing_angle = rng.uniform(-1, 1) * math.radians(12) * min(d, 1.5)
        leg_dx = rng.uniform(-0.05, 0.05, size=2)

        legs = [np.array([[lx, 0.2], [lx + dx, 0.45]]) for lx, dx in zip((-0.05, 0.08), leg_dx)]
        tail = np.array([[-0.4, -0.06], [-0.85, -0.2], [-0.85, 0.12], [-0.4, 0.08]])
        tail = (tail - np.array([-0.4, 0.0])) @ rotation_matrix(tail_angle).T + np.array([-0.4, 0.0])
        body_local = ellipse_points(0.0, 0.0, 0.5, 0.27, 0.0, n=28)
        neck = np.array([0.36, -0.12])
        head_c = (np.array([0.5, -0.26]) - neck) @ rotation_matrix(head_angle).T + neck
        hrot = rotation_matrix(head_angle)

        def hf(pts: np.ndarray) -> np.ndarray:
            return np.atleast_2d(pts) * ps @ hrot.T + head_c

        hr = 0.17
        head_local = ellipse_points(head_c[0], head_c[1], hr, hr, 0.0, n=20)
        crest_local = hf(_CREST)
        beak_local = hf(_BEAKS[attrs['beak']])
        eye_c = hf(np.array([0.05, -0.04]))[0]
        ring_local = ellipse_points(eye_c[0], eye_c[1], 0.065 * ps, 0.065 * ps, 0.0, n=14)
        wc = np.array([-0.06, -0.03])
        wing_local = ellipse_points(wc[0], wc[1], 0.3, 0.13, wing_angle, n=22)
        bw, bh = 0.045 * ps, 0.11 * min(ps, 1.15)
        bars_local = [
            np.array([[bx - bw, -bh], [bx + bw, -bh], [bx + bw, bh], [bx - bw, bh]]) @ rotation_matrix(wing_angle).T
            + wc
            for bx in (-0.06, 0.06)
        ]

        rot = rotation_matrix(theta)
        lin = rot * np.array([flip, 1.0]) * L  # local -> pixel offset from the body centre

        # place the body centre so the whole figure stays inside the image when possible
        extent = np.concatenate([body_local, tail, head_local, crest_local, beak_local, *legs]) @ lin.T
        lo, hi = -extent.min(0), size - extent.max(0)
        mid = np.where(lo <= hi, (lo + hi) / 2, size / 2)
        half = np.where(lo <= hi, (hi - lo) / 2, 0.0)
        cx, cy = (mid + min(1.0, d) * rng.uniform(-1, 1, size=2) * half).tolist()
        offset = np.array([cx, cy])

        def tf(pts: np.ndarray) -> np.ndarray:
            return np.atleast_2d(pts) @ lin.T + offset

        def poly(pts: np.ndarray, fill: Tuple[int, int, int]) -> np.ndarray:
            out = tf(pts)
            draw.polygon(flat_coords(out), fill=fill)
            return out

        # part-like distractors in the background, away from the figure
        obj_r = 0.75 * L
        n_dist = rng.poisson(self.num_distractors * d)
        for _ in range(n_dist):
            for _try in range(10):
                x, y = rng.uniform(0.04 * size, 0.96 * size, 2)
                if math.hypot(x - cx, y - cy) > obj_r:
                    break
            else:
                continue
            self._draw_distractor(draw, rng, x, y, L, ps, self._palette)

        # body colours (nuisance)
        body = hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.9))
        wing_col = scale_color(body, rng.uniform(0.55, 0.8))
        head_col = scale_color(body, rng.uniform(0.8, 1.15))
        dark = _jitter((30, 25, 20), rng, 15)
        beak_col = _jitter((60, 50, 40), rng, 25) if rng.random() < 0.5 else _jitter((200, 170, 90), rng, 30)
        cj = 25.0 * min(d, 2.0)  # part colour jitter

        for leg in legs:
            draw.line(flat_coords(tf(leg)), fill=dark, width=max(1, int(0.025 * L)))
        poly(tail, wing_col)
        body_pts = poly(body_local, body)
        # crest (drawn behind the head); its box is reported even when absent
        crest_pts = tf(crest_local)
        if attrs['crest'] == 'crested':
            crest_col = scale_color(body, rng.uniform(0.4, 0.7)) if rng.random() < 0.5 else scale_color(body, 1.2)
            draw.polygon(flat_coords(crest_pts), fill=crest_col)
        poly(head_local, head_col)
        beak_pts = poly(beak_local, beak_col)
        ring_col = _jitter(PART_COLORS[attrs['eye_ring']], rng, cj)
        ring_pts = poly(ring_local, ring_col)
        poly(ellipse_points(eye_c[0], eye_c[1], 0.03 * ps, 0.03 * ps, 0.0, n=10), dark)
        poly(wing_local, wing_col)
        bar_col = _jitter(PART_COLORS[attrs['wing_bar']], rng, cj)
        bars = [poly(q, bar_col) for q in bars_local]
        bar_pts = np.concatenate(bars)

        # occlusion (may hide parts, which caps the achievable accuracy)
        if rng.random() < min(1.0, self.occlusion_prob * d):
            occ_col = hsv_to_rgb(rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6))
            target = tf(rng.uniform([-0.5, -0.35], [0.6, 0.2]))[0]
            if rng.random() < 0.5:  # branch across the image
                a = rng.uniform(0, math.pi)
                ext = size
                draw.line(
                    [
                        (target[0] - ext * math.cos(a), target[1] - ext * math.sin(a)),
                        (target[0] + ext * math.cos(a), target[1] + ext * math.sin(a)),
                    ],
                    fill=occ_col,
                    width=max(1, int(rng.uniform(0.06, 0.14) * L)),
                )
            else:  # leaf
                r = rng.uniform(0.15, 0.3) * L
                pts = ellipse_points(target[0], target[1], r, 0.45 * r, rng.uniform(0, math.pi), n=16)
                draw.polygon(flat_coords(pts), fill=occ_col)

        # lighting and noise
        out = np.asarray(img.resize((self.image_size, self.image_size), Image.BOX), dtype=np.float32)
        gain = 1.0 + min(d, 1.5) * rng.uniform(-0.2, 0.2)
        bias = min(d, 1.5) * rng.uniform(-20, 20)
        out = out * gain + bias
        sigma = 6.0 * d
        if sigma > 0:
            noise = self._noise_bank()
            ox, oy = rng.integers(0, self.image_size, size=2).tolist()
            out += sigma * noise[oy : oy + self.image_size, ox : ox + self.image_size]
        out = np.clip(out, 0, 255).astype(np.uint8)

        lim = float(self.image_size)

        def to_out(b: Box) -> Box:
            x0, y0, x1, y1 = (min(lim, max(0.0, v / ss)) for v in b)
            return x0, y0, x1, y1

        part_boxes = {
            'beak': to_out(bounding_box(beak_pts)),
            'crest': to_out(bounding_box(crest_pts)),
            'eye_ring': to_out(bounding_box(ring_pts)),
            'wing_bar': to_out(bounding_box(bar_pts)),
        }
        ann = {
            'label': label,
            'center': (float(min(lim, max(0.0, cx / ss))), float(min(lim, max(0.0, cy / ss)))),
            'object_box': to_out(bounding_box(body_pts)),
            'part_box': box_union(list(part_boxes.values())),
            'part_boxes': part_boxes,
        }
        return out, ann

    @staticmethod
    def _draw_distractor(
        draw: ImageDraw.ImageDraw,
        rng: np.random.Generator,
        x: float,
        y: float,
        L: float,
        ps: float,
        palette: Sequence[str],
    ) -> None:
        colors = [PART_COLORS[c] for c in palette]
        col = _jitter(colors[int(rng.integers(len(colors)))], rng, 25)
        kind = int(rng.integers(4))
        a = rng.uniform(0, 2 * math.pi)
        if kind == 0:  # eye ring on a disc
            disc = hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.9))
            for r, c in ((0.17, disc), (0.065 * ps, col), (0.03 * ps, (30, 25, 20))):
                pts = ellipse_points(x, y, r * L, r * L, 0.0, n=14)
                draw.polygon(flat_coords(pts), fill=c)
        elif kind == 1:  # wing bars on a wing-like ellipse
            wing = hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.7))
            pts = ellipse_points(x, y, 0.3 * L, 0.13 * L, a, n=16)
            draw.polygon(flat_coords(pts), fill=wing)
            bw, bh = 0.045 * ps, 0.11 * min(ps, 1.15)
            for bx in (-0.06, 0.06):
                q = np.array([[bx - bw, -bh], [bx + bw, -bh], [bx + bw, bh], [bx - bw, bh]]) * L
                q = q @ rotation_matrix(a).T + np.array([x, y])
                draw.polygon(flat_coords(q), fill=col)
        elif kind == 2:  # beak-like triangle
            shape = [
                np.array([[0.0, -0.055], [0.12, 0.0], [0.0, 0.055]]),
                np.array([[0.0, -0.028], [0.28, 0.01], [0.0, 0.028]]),
                np.array([[0.0, -0.05], [0.12, -0.03], [0.16, 0.03], [0.13, 0.1], [0.1, 0.03], [0.0, 0.05]]),
            ][int(rng.integers(3))]
            fill = (60, 50, 40) if rng.random() < 0.5 else (200, 170, 90)
            q = shape * L * ps @ rotation_matrix(a).T + np.array([x, y])
            draw.polygon(flat_coords(q), fill=_jitter(fill, rng, 25))
        else:  # crest-like spikes
            q = (
                np.array(
                    [
                        [-0.09, 0.1],
                        [-0.06, -0.1],
                        [-0.01, 0.07],
                        [0.03, -0.12],
                        [0.05, 0.07],
                        [0.12, -0.06],
                        [0.1, 0.12],
                    ]
                )
                * L
                * ps
            )
            q = q @ rotation_matrix(a).T + np.array([x, y])
            fill = hsv_to_rgb(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
            draw.polygon(flat_coords(q), fill=fill)
