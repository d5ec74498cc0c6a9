"""The Grad-CAM target as one concept: `GGAMLoss(target=...)`, its named targets, the uniform control without a
magic temperature, a callable target, and the deprecated spellings (same numbers, with a warning)."""
import math
import warnings

import pytest
import torch

from ggam_layers import GGAMLoss
from ggam_layers.loss import CAM_TARGETS, CamTarget, cam_log_target, ggam_divergence, target_log_probs
from ggam_layers.train import TrainConfig


def _inputs(c=12, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 5, generator=g), torch.randint(0, 5, (b,), generator=g),
            torch.randn(b, c, generator=g).softmax(1), torch.randn(b, c, generator=g) * 1e-3)


@pytest.mark.parametrize('name,parts', [
    ('paper', dict(squash='sigmoid', kl='symmetric', target_norm='none', temperature=1.0)),
    ('authors', dict(squash='softmax', kl='forward', target_norm='none', temperature=1.0)),
    ('standardized', dict(squash='sigmoid', kl='symmetric', target_norm='standardize', temperature=1.0)),
])
def test_named_targets_equal_their_parts_and_the_deprecated_spelling(name, parts):
    logits, y, s, beta = _inputs()
    new = GGAMLoss(lam=2.0, target=name).terms(logits, y, s, beta)
    functional = ggam_divergence(s, beta, **parts)
    assert torch.equal(new.ggam, functional)
    with pytest.warns(DeprecationWarning, match='pass target='):
        old = GGAMLoss(lam=2.0, **parts)
    assert old.target == CAM_TARGETS[name] and torch.equal(old.terms(logits, y, s, beta).loss, new.loss)
    assert (old.squash, old.kl, old.target_norm, old.temperature) == tuple(parts.values())


def test_uniform_control_is_exactly_one_over_c_and_equals_the_old_temperature_trick():
    logits, y, s, beta = _inputs(c=96)
    log_q = target_log_probs(beta * 1e6, CAM_TARGETS['uniform'])
    assert torch.equal(log_q, torch.full_like(log_q, -math.log(96)))
    # the control the studies reached through a temperature of 1e30 on the standardised beta gives the same loss
    trick = cam_log_target(beta, 'softmax', 'standardize', 1e30)
    assert torch.equal(trick, log_q)
    assert torch.equal(GGAMLoss(target='uniform')(logits, y, s, beta),
                       GGAMLoss(target=CamTarget('softmax', 'symmetric', 'standardize', 1e30))(logits, y, s, beta))
    assert 'uniform' in repr(GGAMLoss(target='uniform'))


def test_callable_target_and_its_checks():
    logits, y, s, beta = _inputs()
    crit = GGAMLoss(target=lambda b: (b.abs() * 100).log_softmax(1))
    expected = ggam_divergence(s, beta, target=CamTarget(fn=lambda b: (b.abs() * 100).log_softmax(1)))
    assert torch.equal(crit.terms(logits, y, s, beta).ggam, expected)
    assert crit.terms(logits, y, s, beta).ggam > 0
    with pytest.raises(ValueError, match='must return log beta~ of shape'):
        GGAMLoss(target=lambda b: b[:, :2])(logits, y, s, beta)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(target='gradcam'), ValueError, "target must be one of \\('paper', 'authors', 'standardized', 'uniform'\\)"),
    (dict(target=3), TypeError, 'target must be a name of'),
    (dict(target='authors', squash='softmax'), ValueError, "target='authors' and squash='softmax' both say"),
    (dict(target=CamTarget(kl='both')), ValueError, 'kl must be one of'),
    (dict(target=CamTarget(temperature=0.0)), ValueError, 'temperature must be > 0'),
])
def test_bad_targets_are_refused_naming_the_argument(kwargs, error, match):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        with pytest.raises(error, match=match):
            GGAMLoss(**kwargs)


def test_train_config_names_the_target_once():
    assert TrainConfig(cam_target='uniform').validate().loss_target() == CAM_TARGETS['uniform']
    assert TrainConfig(squash='softmax', kl='forward').validate().loss_target() == CAM_TARGETS['authors']
    with pytest.raises(ValueError, match='--cam-target uniform .* and --squash softmax sets a part of it'):
        TrainConfig(cam_target='uniform', squash='softmax').validate()
    with pytest.raises(ValueError, match='cam_target must be one of'):
        TrainConfig(cam_target='flat').validate()


def test_training_with_the_named_uniform_control_equals_the_temperature_trick(tmp_path):
    """The studies' uniform control (standardised beta / 1e30, softmax) and `--cam-target uniform` train the same
    model, seed for seed: the published control numbers stay reproducible."""
    from ggam_layers.train import train

    tiny = dict(model='test_resnet', img_size=32, epochs=1, batch_size=8, threads=1, progress=False, lam=3.0,
                dataset_kwargs={'num_classes': 3, 'samples_per_class': 4})
    named = train(TrainConfig.from_preset('synthetic', **tiny, cam_target='uniform', output=str(tmp_path / 'a')))
    trick = train(TrainConfig.from_preset('synthetic', **tiny, squash='softmax', target_norm='standardize',
                                          cam_temperature=1e30, output=str(tmp_path / 'b')))
    assert named['train_loss'] == trick['train_loss'] and named['test_loss'] == trick['test_loss']
