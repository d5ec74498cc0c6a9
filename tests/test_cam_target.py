"""The Grad-CAM target as one concept: `GGAMLoss(target=...)`, its named targets, the uniform control without a
magic temperature, a callable target, and the deprecated spellings (same numbers, with a warning)."""
import math
import warnings
from dataclasses import asdict

import pytest
import torch

from ggam_layers import GGAMLoss
from ggam_layers.loss import (
    CAM_TARGETS,
    DEFAULT_CAM_TARGET,
    CamTarget,
    cam_log_target,
    ggam_divergence,
    target_log_probs,
)
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


def test_default_target_is_the_standardised_one_and_the_parts_still_build_on_the_paper():
    logits, y, s, beta = _inputs()
    assert DEFAULT_CAM_TARGET == 'standardized' and GGAMLoss().target == CAM_TARGETS['standardized']
    assert torch.equal(GGAMLoss()(logits, y, s, beta), GGAMLoss(target='standardized')(logits, y, s, beta))
    assert not torch.equal(GGAMLoss()(logits, y, s, beta), GGAMLoss(target='paper')(logits, y, s, beta))
    with pytest.warns(DeprecationWarning):
        assert GGAMLoss(kl='forward').target == CamTarget(kl='forward')  # the paper's other parts, not the default's
    # the functions are the equations: their parts default to eq. 5 as written
    assert torch.equal(ggam_divergence(s, beta), ggam_divergence(s, beta, target='paper'))


def test_train_config_default_target_and_the_presets_targets():
    def target(preset=None, **kw):
        cfg = TrainConfig(**kw) if preset is None else TrainConfig.from_preset(preset, **kw)
        return cfg.validate().loss_target()
    assert target() == CAM_TARGETS[DEFAULT_CAM_TARGET] == target('fgvc')
    for preset in ('synthetic', 'synthetic_finetune', 'paper'):
        assert target(preset) == CAM_TARGETS['paper'], preset
    # the main job's target goes with its backbone; the paper's recipe and the from-scratch preset keep theirs
    assert target('synthetic_finetune', model='resnet18') == CAM_TARGETS['standardized']
    assert target('synthetic_finetune', model='test_resnet') == CAM_TARGETS['paper']
    assert target('paper', model='resnet18') == target('synthetic', model='resnet18') == CAM_TARGETS['paper']
    # a named target or a part given replaces a preset's named target; so does spatial guidance, which has none
    assert target('paper', cam_target='uniform') == CAM_TARGETS['uniform']
    assert target('synthetic_finetune', target_norm='standardize') == CAM_TARGETS['standardized']
    assert target('paper', kl='forward') == CamTarget(kl='forward')
    assert TrainConfig.from_preset('synthetic', guide='spatial').validate().cam_target is None
    # a preset's run records the target it trains with by name (config.json), the default included
    assert TrainConfig.from_preset('fgvc').cam_target == DEFAULT_CAM_TARGET and TrainConfig().cam_target is None
    assert TrainConfig.from_preset('fgvc', kl='forward').cam_target is None


def test_config_json_written_before_the_default_changed_keeps_its_target():
    old_parts = dict(squash='sigmoid', kl='symmetric', target_norm='none', cam_temperature=1.0)
    base = asdict(TrainConfig())
    # the parts recorded beside a named target (or spatial guidance) were the defaults of their day, not given
    named = TrainConfig.from_dict({**base, **old_parts, 'cam_target': 'uniform'}).validate()
    assert named.loss_target() == CAM_TARGETS['uniform'] and named.target_norm is None
    spatial = TrainConfig.from_dict({**base, **old_parts, 'guide': 'spatial'}).validate()
    assert (spatial.squash, spatial.kl, spatial.target_norm, spatial.cam_temperature) == (None,) * 4
    # without a name they were the target: a run resumed from such a file keeps the paper's target
    assert TrainConfig.from_dict({**base, **old_parts}).validate().loss_target() == CAM_TARGETS['paper']
    with pytest.raises(ValueError, match='--cam-target uniform .* and --kl forward sets a part of it'):
        TrainConfig.from_dict({**base, **old_parts, 'kl': 'forward', 'cam_target': 'uniform'}).validate()


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
