"""Our Grad-CAM weights against independent implementations (captum, torchcam; docs/design.md, Grad-CAM).

The target is the GGAM head's input A, produced by a small conv stem, so that beta depends on the input through the
attention (for a plain GAP + linear head beta would just be W[k] / N).
"""
import pytest
import timm
import torch
import torch.nn as nn

from ggam_layers import GGAMHead, wrap_timm_model

captum_gradient = pytest.importorskip('captum._utils.gradient')
torchcam_methods = pytest.importorskip('torchcam.methods')


class StemHead(nn.Module):
    def __init__(self, **head_kwargs):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
        self.head = GGAMHead(32, 10, rd_ratio=0.25, **head_kwargs)

    def forward(self, x):
        return self.head(self.stem(x))


def _model(dtype, **head_kwargs):
    torch.manual_seed(0)
    model = StemHead(**head_kwargs).to(dtype).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(3.0)
    return model


def _ours(model, x):
    return model.head.forward_ggam(model.stem(x))


@pytest.mark.parametrize('dtype', (torch.float32, torch.float64))
@pytest.mark.parametrize('head_kwargs', ({}, {'spatial_norm': 'sigmoid'}, {'parts': 'channel'}))
def test_captum_agrees(dtype, head_kwargs):
    model = _model(dtype, **head_kwargs)
    x = torch.randn(4, 3, 16, 14, dtype=dtype)
    ours = _ours(model, x)
    (grads,), _ = captum_gradient.compute_layer_gradients_and_eval(
        model, model.stem, x, target_ind=ours.classes.tolist())
    beta = grads.mean((2, 3))
    assert beta.std(0).abs().max() > 0  # beta depends on the input
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    scale = beta.abs().max()
    torch.testing.assert_close(ours.cam_weights / scale, beta / scale, rtol=0, atol=tol)


@pytest.mark.parametrize('dtype', (torch.float32, torch.float64))
def test_torchcam_agrees(dtype):
    model = _model(dtype)
    x = torch.randn(3, 3, 16, 16, dtype=dtype)
    ours = _ours(model, x)
    with torchcam_methods.GradCAM(model, target_layer=model.stem, input_shape=(3, 16, 16)) as extractor:
        scores = model(x)
        (beta,) = extractor._get_weights(ours.classes.tolist(), scores)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    scale = beta.abs().max()
    torch.testing.assert_close(ours.cam_weights.to(beta.dtype) / scale, beta / scale, rtol=0, atol=tol)


@pytest.mark.parametrize('name', ('test_resnet', 'test_convnext'))
def test_captum_agrees_on_a_wrapped_timm_model(name):
    torch.manual_seed(0)
    model = wrap_timm_model(name, num_classes=5).double().eval()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    ours = model.forward_ggam(x)

    class Features(nn.Module):  # captum needs a layer module whose output is A
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return self.backbone.forward_features(x)

    class Net(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.features, self.head = Features(model.backbone), model.head

        def forward(self, x):
            return self.head(self.features(x))

    net = Net(model)
    (grads,), _ = captum_gradient.compute_layer_gradients_and_eval(net, net.features, x,
                                                                    target_ind=ours.classes.tolist())
    beta = grads.mean((2, 3))
    scale = beta.abs().max()
    torch.testing.assert_close(ours.cam_weights / scale, beta / scale, rtol=0, atol=1e-10)
    assert timm.is_model(name)
