"""Tests of ggam_layers.viz: Grad-CAM heat maps against captum and torchcam, side effects, rendering, the CLI."""
import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import load_benchmark

from ggam_layers import wrap_timm_model
from ggam_layers.model import GGAMModel
from ggam_layers.viz import (
    CamMaps,
    cam_grid_size,
    cam_maps,
    feature_grid,
    grad_cam_map,
    normalize_maps,
    overlay_heatmap,
    plot_cam_grid,
    register_cli,
    render_cam_grid,
)

pytestmark = pytest.mark.timeout(120)

LAYOUTS = [
    ('test_resnet', {}),  # NCHW
    ('test_mambaout', {}),  # NHWC
    ('test_vit', {'dynamic_img_size': True}),  # tokens with a class token
]
IMG_HW = (96, 128)  # not the models' default 160 x 160, and not square


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(name: str, seed: int = 0, num_classes: int = 5, **kwargs) -> GGAMModel:
    torch.manual_seed(seed)
    model = wrap_timm_model(name, num_classes=num_classes, **kwargs)
    with torch.no_grad():  # a head with a real spread of logits, so the maps are far from constant
        model.head.fc.weight.normal_(0, 1.0)
    return model.eval()


def _images(b: int = 3, hw=IMG_HW, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, *hw, generator=torch.Generator().manual_seed(seed))


class _NCHWFeatures(nn.Module):
    """model(x) through an identity module whose output is A in NCHW: a layer captum and torchcam can hook."""

    def __init__(self, model: GGAMModel):
        super().__init__()
        self.model = model
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.model.features_to_nchw(self.model.forward_features(x), feature_grid(self.model, x.shape[-2:]))
        return self.model.head(self.features(a))


def _captum_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes) -> torch.Tensor:
    from captum._utils.gradient import compute_layer_gradients_and_eval

    (g,), (a,) = compute_layer_gradients_and_eval(model, layer, x, target_ind=[int(k) for k in classes])
    beta = g.mean((2, 3))
    return torch.relu((beta[:, :, None, None] * a).sum(1)), beta


def _reference_heatmap(cam: torch.Tensor, hw) -> torch.Tensor:
    up = F.interpolate(cam[:, None], size=tuple(hw), mode='bilinear', align_corners=False)[:, 0]
    lo = up.amin((1, 2), keepdim=True)
    hi = up.amax((1, 2), keepdim=True)
    return (up - lo) / (hi - lo)


@pytest.mark.parametrize('head', ['default', 'input_dependent'])
def test_heatmap_matches_captum_at_the_last_stage(head):
    """test_resnet: the backbone's last stage (layer4) outputs A; captum's Grad-CAM there is the oracle."""
    if head == 'default':
        model = _model('test_resnet')
    else:  # sigmoid T and a sharp channel attention: beta has a large part that is not W[k] times a scalar
        model = _model('test_resnet', spatial_norm='sigmoid')
        with torch.no_grad():
            model.head.attn.fc1.weight.normal_(0, 1.0)
            model.head.attn.fc2.weight.normal_(0, 1.0)
    x = _images()
    res = cam_maps(model, x)
    assert isinstance(res, CamMaps)
    assert res.heatmap.shape == (3, *IMG_HW) and res.attention.shape == (3, *IMG_HW)
    cam, beta = _captum_cam(model, model.backbone.layer4, x, res.labels)
    torch.testing.assert_close(res.cam_weights, beta, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(res.cam, cam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.heatmap, _reference_heatmap(cam, IMG_HW), rtol=1e-4, atol=1e-5)
    same = cam_maps(model, x, classes=0)
    torch.testing.assert_close(same.cam_weights, _captum_cam(model, model.backbone.layer4, x, [0, 0, 0])[1],
                               rtol=1e-4, atol=1e-7)
    if head == 'input_dependent':  # the part of beta off the classifier row is 1e2 times the tolerance
        w = model.head.fc.weight[0].detach()
        off = same.cam_weights - (same.cam_weights @ w)[:, None] / (w @ w) * w
        assert (off.norm(dim=1) / same.cam_weights.norm(dim=1)).min() > 1e-2


def test_heatmap_matches_torchcam():
    from torchcam.methods import GradCAM

    model = _model('test_resnet', seed=3)
    x = _images(seed=4)
    classes = [1, 4, 2]
    res = cam_maps(model, x, classes=classes)
    assert res.classes.tolist() == classes
    with GradCAM(model, target_layer=model.backbone.layer4) as extractor:
        scores = model(x)
        (ref,) = extractor(classes, scores)  # ReLU, then min-max scaled at the feature resolution
    torch.testing.assert_close(normalize_maps(res.cam), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name,kwargs', LAYOUTS, ids=[n for n, _ in LAYOUTS])
def test_layouts_match_captum_at_any_size(name, kwargs):
    model = _model(name, seed=5, **kwargs)
    x = _images(2, seed=6)
    res = cam_maps(model, x)
    wrapper = _NCHWFeatures(model)
    cam, beta = _captum_cam(wrapper, wrapper.features, x, res.labels)
    assert res.cam.shape == cam.shape and res.heatmap.shape == (2, *IMG_HW)
    torch.testing.assert_close(res.cam_weights, beta, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(res.heatmap, _reference_heatmap(cam, IMG_HW), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.probs, model(x).softmax(1))
    assert res.heatmap.min() == 0 and res.heatmap.max() == 1
    assert res.attention.min() == 0 and res.attention.max() == 1


def test_autograd_fallback_gives_the_same_maps():
    closed = _model('test_resnet', seed=7)
    fallback = _model('test_resnet', seed=7, closed_form=False)
    assert closed.head.uses_closed_form() and not fallback.head.uses_closed_form()
    x = _images(seed=8)
    a, b = cam_maps(closed, x), cam_maps(fallback, x)
    torch.testing.assert_close(a.cam, b.cam, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.attention, b.attention)


def _state(model: nn.Module):
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return flags, grads, req, buffers


def _assert_same_state(before, after):
    flags, grads, req, buffers = before
    flags2, grads2, req2, buffers2 = after
    assert flags == flags2
    assert req == req2
    for n, g in grads.items():
        if g is None:
            assert grads2[n] is None, n
        else:
            assert torch.equal(g, grads2[n]), n
    for n, b in buffers.items():
        assert torch.equal(b, buffers2[n]), n


@pytest.mark.parametrize('mode', ['train', 'eval', 'mixed'])
@pytest.mark.parametrize('closed_form', [True, False])
def test_mode_grads_and_buffers_untouched(mode, closed_form):
    model = _model('test_resnet', seed=9, closed_form=closed_form)
    model.train(mode != 'eval')
    if mode == 'mixed':  # a frozen BatchNorm in eval mode inside a training model
        model.backbone.bn1.eval()
        model.head.eval()
    params = list(model.parameters())
    for i, p in enumerate(params):  # every other parameter holds a .grad, the rest None
        if i % 2 == 0:
            p.grad = torch.randn_like(p)
    before = _state(model)
    res = cam_maps(model, _images(2, seed=10))
    _assert_same_state(before, _state(model))
    assert res.heatmap.requires_grad is False and res.probs.requires_grad is False
    # eval_mode=False runs the model as it is: flags and grads stay; in train mode only BatchNorm statistics move
    cam_maps(model, _images(2, seed=10), eval_mode=False)
    flags, grads, req, _ = _state(model)
    _assert_same_state(before[:3] + ({},), (flags, grads, req, {}))


def test_no_spatial_attention_and_errors():
    model = _model('test_resnet', parts='channel')
    res = cam_maps(model, _images(2))
    assert res.attention is None and res.spatial_weights is None
    assert res.heatmap.shape == (2, *IMG_HW)
    with pytest.raises(TypeError, match='model'):
        cam_maps(nn.Linear(2, 2), _images(2))
    with pytest.raises(ValueError, match='classes'):
        cam_maps(model, _images(2), classes=[0, 7])
    with pytest.raises(ValueError, match='classes'):
        cam_maps(model, _images(2), classes=[0])
    with pytest.raises(ValueError, match='images'):
        cam_maps(model, torch.zeros(3, 96, 96))


def test_normalize_maps_and_grad_cam_map():
    maps = torch.stack([torch.full((3, 4), 2.0), torch.arange(12.0).view(3, 4) - 5])
    out = normalize_maps(maps, size=(6, 8))
    assert out.shape == (2, 6, 8)
    assert torch.equal(out[0], torch.zeros(6, 8))  # constant -> zeros, not NaN
    assert out[1].min() == 0 and out[1].max() == 1
    a = torch.randn(2, 4, 3, 3)
    beta = torch.randn(2, 4)
    torch.testing.assert_close(grad_cam_map(a, beta), torch.relu((beta[:, :, None, None] * a).sum(1)))
    with pytest.raises(ValueError, match='cam_weights'):
        grad_cam_map(a, beta[:, :3])


def _rgb(seed: int, hw=(80, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((*hw, 3), np.float32) + rng.uniform(0.2, 0.8, 3)
    img[20:50, 30:60] = rng.uniform(0, 1, 3)
    return img


def test_overlay_is_not_blank():
    img = _rgb(0)
    heat = torch.zeros(80, 80)
    heat[10:30, 10:40] = 1.0
    out = overlay_heatmap(img, heat)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    assert np.abs(out - img).mean() > 0.05
    assert out[15, 15].tolist() != out[60, 60].tolist()  # the hot region differs from the cold one


def test_render_grid_size_and_panels(tmp_path):
    pytest.importorskip('matplotlib')
    from PIL import Image

    models = {'ggam': _model('test_resnet', seed=11), 'baseline': _model('test_resnet', seed=12, parts='none')}
    images = [_rgb(1), _rgb(2, (60, 90))]
    names = ['cls0', 'cls1', 'cls2', 'cls3', 'cls4']
    fig = plot_cam_grid(images, models, label_names=names, targets=[0, 1], boxes=[(30, 20, 60, 50), None],
                        img_size=64)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * (1 + 2 * 2)  # rows: images; columns: input + (Grad-CAM, T) per model
    assert len(fig.axes) == len(panels) + 1  # the colour bar
    grid = sorted((ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in panels)
    assert grid == [(r, c) for r in range(2) for c in range(5)]
    titles = [' '.join(ax.get_title().split()) for ax in panels]  # titles carry the label and its score
    assert sum(bool(re.search(r'pred cls\d \(\d\.\d\d\)', t)) for t in titles) == 2 * 4
    assert sum('true: cls' in t for t in titles) == 2
    headers = [t.get_text() for t in fig.texts]
    assert headers == ['input', 'ggam', 'baseline']
    assert sum('no spatial' in t.get_text() for ax in panels for t in ax.texts) == 2

    out = render_cam_grid(images, models, tmp_path / 'sub' / 'grid.png', label_names=names, img_size=64, dpi=50)
    with Image.open(out) as im:
        assert im.size == (round(1.8 * 5.35 * 50), round(1.8 * (1.3 * 2 + 0.25) * 50)) == cam_grid_size(2, 2, dpi=50)
        px = np.asarray(im.convert('RGB'), np.float32) / 255
    # the panels of row 0 as drawn: the heat-map panel differs from the input panel beside it
    fig = plot_cam_grid(images, models, label_names=names, img_size=64, dpi=50)
    fig.canvas.draw()
    row0 = sorted((ax for ax in fig.axes if ax.get_images() and ax.get_subplotspec().rowspan.start == 0),
                  key=lambda ax: ax.get_subplotspec().colspan.start)
    h = px.shape[0]

    def crop(ax):
        b = ax.get_window_extent()
        return px[int(h - b.y1) + 2:int(h - b.y0) - 2, int(b.x0) + 2:int(b.x1) - 2]

    inp, heat = crop(row0[0]), crop(row0[1])
    assert inp.size and heat.size
    assert abs(heat.mean() - inp.mean()) > 0.02 or abs(heat.std() - inp.std()) > 0.02


def _save(model: GGAMModel, path):
    from timm.models import save_for_hf

    save_for_hf(model, path, safe_serialization=True)
    return str(path)


def test_cli_cam(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    import timm
    from PIL import Image

    torch.manual_seed(0)
    a = _save(timm.create_model('ggam_test_resnet', num_classes=3), tmp_path / 'a')
    b = _save(timm.create_model('ggam', backbone='test_vit', num_classes=3, dynamic_img_size=True), tmp_path / 'b')
    files = []
    for i in range(2):
        files.append(str(tmp_path / f'img{i}.png'))
        Image.fromarray((_rgb(i, (70, 50)) * 255).astype(np.uint8)).save(files[-1])
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest='command'))
    out = tmp_path / 'cam.png'
    args = parser.parse_args(['cam', *files, '--model', a, '--compare', b, '--titles', 'resnet', 'vit', '--out',
                              str(out), '--img-size', '64', '96', '--dpi', '40'])
    assert args.func(args) == 0
    with Image.open(out) as im:
        assert im.size == (round(1.8 * 5.35 * 40), round(1.8 * (1.3 * 2 + 0.25) * 40))
    assert 'wrote' in capsys.readouterr().out
    with pytest.raises(ValueError, match='IMAGE'):
        bad = parser.parse_args(['cam', str(tmp_path / 'missing.png'), '--model', a, '--out', str(out)])
        bad.func(bad)


def test_cli_cam_synthetic_images(tmp_path):
    pytest.importorskip('matplotlib')
    pytest.importorskip('ggam_layers.data.synthetic')
    import timm
    from PIL import Image

    torch.manual_seed(0)
    a = _save(timm.create_model('ggam_test_resnet', num_classes=4), tmp_path / 'a')
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest='command'))
    out = tmp_path / 'syn.png'
    args = parser.parse_args(['cam', 'synthetic:test:0,2-3', '--model', a, '--out', str(out), '--img-size', '64',
                              '--dpi', '40'])
    assert args.func(args) == 0
    with Image.open(out) as im:
        assert im.size == (round(1.8 * 3.35 * 40), round(1.8 * (1.3 * 3 + 0.25) * 40))


def test_load_image_inputs(tmp_path):
    from PIL import Image

    from ggam_layers.viz import load_image

    arr = (_rgb(3, (30, 40)) * 255).astype(np.uint8)
    path = tmp_path / 'x.png'
    Image.fromarray(arr).save(path)
    for src in (str(path), Image.fromarray(arr), arr, torch.from_numpy(arr).permute(2, 0, 1), arr[..., 0]):
        out = load_image(src)
        assert out.shape == (30, 40, 3) and out.dtype == np.float32 and 0 <= out.min() <= out.max() <= 1
    assert np.allclose(load_image(str(path)), arr / 255.0)
    assert load_image(arr, size=(16, 24)).shape == (16, 24, 3)
    with pytest.raises(TypeError, match='image'):
        load_image(3)
    assert feature_grid(_model('test_resnet'), (96, 128)) is None
    assert feature_grid(_model('test_vit', dynamic_img_size=True), (96, 128)) == (6, 8)


def test_localization_benchmark_runs(tmp_path):
    """benchmarks/localization.py end to end at toy size: trains a model here, saves it, measures, writes results."""
    pytest.importorskip('ggam_layers.data.synthetic')
    import json

    module = load_benchmark('localization')
    assert module.main(['--train', 'ggam', '--epochs', '1', '--train-per-class', '2', '--num-classes', '4',
                        '--limit', '8', '--out-dir', str(tmp_path), '--save-dir', str(tmp_path / 'models')]) == 0
    rows = json.loads((tmp_path / 'localization.json').read_text())['rows']
    assert len(rows) == 1 and rows[0]['images'] == 8
    for key in ('cam_box_strict', 'T_box_strict', 'chance_box_strict', 'cam_parts_half_stride', 'accuracy'):
        assert 0.0 <= rows[0][key] <= 1.0
    assert (tmp_path / 'models' / 'ggam' / 'model.safetensors').is_file()

    # --groups: the saved model measured twice as one group, and a group by hand
    saved = str(tmp_path / 'models' / 'ggam')
    assert module.main(['--model', saved, saved, '--titles', 's0', 's1', '--groups', 'g', 'g', '--limit', '8',
                        '--out-dir', str(tmp_path), '--name', 'grouped']) == 0
    result = json.loads((tmp_path / 'grouped.json').read_text())
    (group,) = result['meta']['groups']
    assert group['group'] == 'g' and group['models'] == 2
    for col in module.GROUP_COLUMNS:
        assert group[col] == pytest.approx(result['rows'][0][col]) and group[f'{col}_std'] == pytest.approx(0.0)
    assert '| g | 2 |' in (tmp_path / 'grouped.md').read_text()
    by_hand = module.group_summary([{'group': 'a', 'accuracy': 0.5}, {'group': 'b', 'accuracy': 0.2},
                                    {'group': 'a', 'accuracy': 0.7}])
    assert [g['group'] for g in by_hand] == ['a', 'b'] and [g['models'] for g in by_hand] == [2, 1]
    assert by_hand[0]['accuracy'] == pytest.approx(0.6) and by_hand[0]['accuracy_std'] == pytest.approx(0.02 ** 0.5)
    assert by_hand[1]['accuracy_std'] is None and 'cam_box_strict' not in by_hand[1]
    with pytest.raises(SystemExit):
        module.main(['--model', saved, '--groups', 'a', 'b'])


def test_cli_cam_embedded_model(tmp_path):
    """The README command's shape: the embedded model by its tag, synthetic images, offline."""
    pytest.importorskip('matplotlib')
    pytest.importorskip('ggam_layers.data.synthetic')
    import timm
    from PIL import Image

    import ggam_layers  # noqa: F401

    cfg = timm.models.get_pretrained_cfg('ggam_test_resnet.synthetic')
    if cfg is None or not cfg.file or not Path(cfg.file).is_file():
        pytest.skip('embedded model not available')
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest='command'))
    out = tmp_path / 'emb.png'
    args = parser.parse_args(['cam', 'synthetic:test:0,1', '--model',
                              'ggam_test_resnet.synthetic', '--out', str(out), '--dpi', '40'])
    assert args.func(args) == 0
    with Image.open(out) as im:
        assert im.size == cam_grid_size(2, 1, dpi=40)
