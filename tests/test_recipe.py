"""The modern recipe of `ggam-layers train`: EMA, mixup / cutmix, timm's augmentations, layer decay, gradient
accumulation, compile, timm's optimizers and schedulers, the fgvc preset, and what a diverging run does."""
import json
import math

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from ggam_layers import GGAMLoss
from ggam_layers._files import WEIGHTS_NAME
from ggam_layers.cli import main
from ggam_layers.train import TrainConfig, evaluate, train
from ggam_layers.train.build import build_model, build_optimizer, build_scheduler
from ggam_layers.train.checkpoint import TRAINING_WEIGHTS_NAME, list_checkpoints
from ggam_layers.train.distributed import DistInfo
from ggam_layers.train.loop import StepOptions, StepState, TrainForward, TrainingDiverged, train_one_epoch
from ggam_layers.train.runner import build_mixup, check_finite_weights

pytestmark = pytest.mark.timeout(300)

TINY = dict(model='test_resnet', model_kwargs={}, dataset_kwargs={'num_classes': 4, 'samples_per_class': 8},
            img_size=32, epochs=2, batch_size=8, eval_batch_size=16, threads=1, progress=False)
TINY_ARGS = ['--preset', 'synthetic',
             '--model', 'test_resnet', '--img-size', '32', '--data-arg', 'num_classes=4', '--data-arg',
             'samples_per_class=8', '--epochs', '2', '--batch-size', '8', '--threads', '1', '--no-progress']


def tiny(out, **kw) -> TrainConfig:
    return TrainConfig.from_preset('synthetic', **{**TINY, 'output': str(out), **kw})


def _weights(path):
    return load_file(str(path))


def _state(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- EMA -----------------------------------------------------------------------------------------------------------
def test_ema_weights_are_evaluated_saved_and_resumed(tmp_path):
    full = train(tiny(tmp_path / 'full', model_ema=True, model_ema_decay=0.5))
    out = tmp_path / 'full'
    assert full['weights'] == 'ema' and full['model_ema_decay'] == 0.5
    ema, raw = _weights(out / WEIGHTS_NAME), _weights(list_checkpoints(out)[-1] / TRAINING_WEIGHTS_NAME)
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())  # not the raw weights
    # model.safetensors is what was evaluated: `eval` reproduces the recorded accuracy
    assert evaluate(out)['top1'] == full['test_top1']
    results = json.loads((out / 'results.json').read_text())
    assert results['weights'] == 'ema' and 'test_top1_raw' in results
    # resumed from the first epoch, the EMA and the trained weights end as in one run
    train(tiny(tmp_path / 'part', model_ema=True, model_ema_decay=0.5, stop_after=1))
    train(tiny(tmp_path / 'part', model_ema=True, model_ema_decay=0.5, resume=True))
    for name in (WEIGHTS_NAME, f'checkpoints/epoch-0002/{TRAINING_WEIGHTS_NAME}'):
        a, b = _weights(out / name), _weights(tmp_path / 'part' / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


# --- mixup / cutmix ------------------------------------------------------------------------------------------------
class _Recorder(TrainForward):
    """TrainForward that records the classes Grad-CAM is asked to explain, and the targets the loss sees."""

    def __init__(self, model, calls):
        super().__init__(model, ggam=True)
        self.calls = calls

    def forward(self, x, classes=None):
        self.calls.append(None if classes is None else classes.clone())
        return super().forward(x, classes)


@pytest.mark.parametrize('cam_class', ['pred', 'label'])
def test_mixup_makes_soft_targets_and_grad_cam_explains_the_documented_class(cam_class):
    cfg = TrainConfig(model='test_resnet', mixup=0.8, cutmix=1.0, label_smoothing=0.1, cam_class=cam_class)
    mixup = build_mixup(cfg, num_classes=4)
    torch.manual_seed(0)
    model = timm.create_model('ggam', backbone='test_resnet', num_classes=4)
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    targets, calls = [], []
    loss = GGAMLoss()

    class SeeTargets(nn.Module):
        def terms(self, out, target):
            targets.append(target.clone())
            return loss.terms(out, target)

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for g in opt.param_groups:
        g['initial_lr'], g['name'] = 0.0, 'head'
    state = StepState(mixup=mixup)
    train_one_epoch(_Recorder(model, calls), model, SeeTargets(), opt, None, [(x, y)], 0,
                    StepOptions(cam_class=cam_class, epochs=1), DistInfo(device=torch.device('cpu')), state=state)
    (target,) = targets
    assert target.shape == (8, 4) and target.is_floating_point()  # soft targets
    assert torch.allclose(target.sum(1), torch.ones(8)) and (target.max(1).values < 1).all()  # mixed and smoothed
    if cam_class == 'pred':
        assert calls == [None]  # forward_ggam explains the predicted class (the paper's rule)
    else:
        assert torch.equal(calls[0], target.argmax(1))  # the label with the larger weight in the mixed target


# --- accumulation, layer decay, timm optimizers and schedules ------------------------------------------------------
def test_gradient_accumulation_gives_the_update_of_the_larger_batch(tmp_path):
    # test_vit has no BatchNorm; 16 training images: one update of 16, or two accumulated batches of 8 (SGD: the
    # update is linear in the gradient, where Adam's first step would turn float rounding into sign flips)
    kw = dict(model='test_vit', img_size=32, dataset_kwargs={'num_classes': 4, 'samples_per_class': 4}, epochs=1,
              opt='sgd', lr=0.05, train_aug='none', eval_every=1)
    big = train(tiny(tmp_path / 'big', batch_size=16, **kw))
    acc = train(tiny(tmp_path / 'acc', batch_size=8, grad_accum_steps=2, **kw))
    a, b = _weights(tmp_path / 'big' / WEIGHTS_NAME), _weights(tmp_path / 'acc' / WEIGHTS_NAME)
    init = _state(build_model(tiny(tmp_path / 'x', **kw), 4))
    assert any(not torch.allclose(a[k], init[k]) for k in a)  # the update moved the weights
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k
    assert big['train_loss'] == pytest.approx(acc['train_loss'], rel=1e-5)


def test_layer_decay_and_the_head_split_show_in_the_optimizer_groups(tmp_path):
    cfg = tiny(tmp_path, model='test_convnext', layer_decay=0.5, backbone_lr_scale=0.1, lr=1e-2).validate()
    opt = build_optimizer(build_model(cfg, 4), cfg)
    lrs = {g['name']: g['lr'] for g in opt.param_groups}
    assert lrs['head'] == pytest.approx(1e-2)
    depths = sorted({int(n.split('-')[1].split('.')[0]) for n in lrs if n.startswith('backbone.top-')})
    assert len(depths) > 3
    for d in depths:
        assert lrs[f'backbone.top-{d}'] == pytest.approx(1e-2 * 0.1 * 0.5 ** d)
    # the same groups, with their learning rates, are logged per epoch
    result = train(tiny(tmp_path / 'run', model='test_convnext', layer_decay=0.5, backbone_lr_scale=0.1, epochs=1))
    logged = result['history'][-1]['lr_groups']
    assert set(logged) == set(lrs) and logged['head'] > logged['backbone.top-1'] > logged['backbone.top-2']


def test_timm_optimizer_and_scheduler_names(tmp_path):
    cfg = tiny(tmp_path, opt='lamb', sched='step', decay_epochs=1, decay_rate=0.1, warmup_epochs=0, epochs=3,
               lr=1e-2).validate()
    opt = build_optimizer(build_model(cfg, 4), cfg)
    assert type(opt).__name__ == 'Lamb'
    sched = build_scheduler(opt, cfg, updates_per_epoch=4)
    sched.step_update(4 * 2)  # after two epochs: two decays
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([1e-4, 1e-4])
    sgd = build_optimizer(build_model(tiny(tmp_path, opt='sgd'), 4), tiny(tmp_path, opt='sgd'))
    assert type(sgd).__name__ == 'SGD' and sgd.defaults['nesterov'] is False  # the paper's SGD
    with pytest.raises(ValueError, match="opt 'adamx' is not an optimizer of timm"):
        tiny(tmp_path, opt='adamx').validate()
    result = train(tiny(tmp_path / 'run', opt='nadamw', sched='cosine', epochs=1))
    assert result['finished'] and math.isfinite(result['train_loss'])


def test_on_device_data_path_refuses_pil_augmentations_by_name(tmp_path):
    with pytest.raises(ValueError, match='cannot apply --aa'):
        tiny(tmp_path, data_path='device', train_aug='timm', aa='rand-m9-mstd0.5-inc1').validate()
    with pytest.raises(ValueError, match="--aa rand-m9-mstd0.5-inc1 .aa.: applied by timm's training transform only, "
                                         'and --train-aug flip'):
        TrainConfig(aa='rand-m9-mstd0.5-inc1').validate()  # built directly: train_aug was not chosen by a flag


@pytest.mark.slow
def test_compile_trains(tmp_path):
    result = train(tiny(tmp_path / 'run', compile=True, epochs=1))
    assert result['finished'] and math.isfinite(result['train_loss'])


def test_grad_checkpointing_trains_to_the_same_weights(tmp_path):
    a = train(tiny(tmp_path / 'a', epochs=1))
    b = train(tiny(tmp_path / 'b', epochs=1, grad_checkpointing=True))
    wa, wb = _weights(tmp_path / 'a' / WEIGHTS_NAME), _weights(tmp_path / 'b' / WEIGHTS_NAME)
    params = {n for n, _ in build_model(tiny(tmp_path / 'x'), 4).named_parameters()}
    # the recomputed forward updates BatchNorm's running statistics once more; the parameters are the same
    assert params and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in params)
    assert a['train_loss'] == pytest.approx(b['train_loss'], rel=1e-6)


def test_fgvc_preset_runs_on_a_tiny_model(tmp_path, capsys):
    cfg = TrainConfig.from_preset('fgvc')
    assert cfg.model_ema and cfg.mixup and cfg.cutmix and cfg.aa and cfg.layer_decay and cfg.label_smoothing
    out = tmp_path / 'fgvc'
    argv = ['train', '--preset', 'fgvc', '--dataset', 'synthetic', '--model', 'test_convnext', '--no-pretrained',
            '--img-size', '32', '--data-arg', 'num_classes=4', '--data-arg', 'samples_per_class=8', '--epochs', '1',
            '--batch-size', '8', '--eval-batch-size', '16', '--threads', '1', '--no-progress', '--output', str(out)]
    assert main(argv) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['finished'] and results['weights'] == 'ema'
    saved = json.loads((out / 'config.json').read_text())['ggam_layers']['train_config']
    assert saved['preset'] == 'fgvc' and saved['aa'] == 'rand-m9-mstd0.5-inc1' and saved['layer_decay'] == 0.8


# --- divergence ----------------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_one_message_and_keeps_its_good_checkpoint(tmp_path, capsys):
    # SGD at lr 100 warmed up over 3 epochs: epochs 1 and 2 stay finite, epoch 3 does not
    out = tmp_path / 'div'
    args = [a for a in TINY_ARGS if a not in ('--epochs', '2')]
    code = main(['train', *args, '--epochs', '3', '--opt', 'sgd', '--lr', '100', '--sched', 'none',
                 '--warmup-epochs', '3', '--output', str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count('training diverged') == 1 and 'epoch 3' in err
    assert 'a lower --lr (now 100)' in err and '--grad-clip 1.0' in err
    ckpts = list_checkpoints(out)
    assert [c.name for c in ckpts] == ['epoch-0001', 'epoch-0002'] and str(ckpts[-1]) in err
    good = _weights(ckpts[-1] / WEIGHTS_NAME)
    assert all(torch.isfinite(v).all() for v in good.values())  # nothing non-finite on disk
    exported = _weights(out / WEIGHTS_NAME)  # model.safetensors is still the last good checkpoint's
    assert exported.keys() == good.keys() and all(torch.equal(exported[k], good[k]) for k in good)
    assert not (out / 'results.json').exists()  # a diverged run records no result


def test_a_non_finite_loss_is_skipped_then_stops_the_run(tmp_path, capsys):
    # SGD at lr 1e12: the first update is finite and blows the weights up, so every later loss is non-finite; each is
    # skipped, and the third in a row (more than --max-nonfinite-steps 2) stops the run inside epoch 1 (4 updates)
    out = tmp_path / 'nan'
    code = main(['train', *TINY_ARGS, '--opt', 'sgd', '--lr', '1e12', '--max-nonfinite-steps', '2',
                 '--output', str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.count('training diverged') == 1
    assert '3 optimizer updates in a row had a non-finite loss (epoch 1, update 4; each was skipped)' in err
    assert not list_checkpoints(out) and not (out / WEIGHTS_NAME).exists()  # no weights were ever good to keep
    assert not (out / 'metrics.jsonl').exists()  # no epoch ended, so no history row was written
    assert not (out / 'results.json').exists()


def test_non_finite_weights_are_never_checkpointed():
    model = nn.Linear(2, 2)
    check_finite_weights(model, None, 1)
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    with pytest.raises(TrainingDiverged, match='non-finite weights'):
        check_finite_weights(model, None, 3)


def test_skipped_updates_leave_the_weights_and_count(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('ggam', backbone='test_resnet', num_classes=4)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for g in opt.param_groups:
        g['initial_lr'], g['name'] = 0.1, 'head'
    x = torch.full((4, 3, 32, 32), float('nan'))
    y = torch.tensor([0, 1, 2, 3])
    state = StepState()
    row = train_one_epoch(TrainForward(model, True), model, GGAMLoss(), opt, None, [(x, y)] * 3, 0,
                          StepOptions(epochs=1, max_nonfinite_steps=5), DistInfo(device=torch.device('cpu')),
                          state=state)
    assert row['skipped_steps'] == 3 and state.skipped_in_a_row == 3 and state.updates == 3
    assert all(torch.equal(p, before[k]) for k, p in model.named_parameters())  # no update was applied
    with pytest.raises(TrainingDiverged, match='non-finite weights'):  # NaN batches poisoned BatchNorm's statistics
        check_finite_weights(model, None, 1)
    with pytest.raises(TrainingDiverged, match='3 updates in a row had a non-finite loss'):
        train_one_epoch(TrainForward(model, True), model, GGAMLoss(), opt, None, [(x, y)] * 3, 1,
                        StepOptions(epochs=2, max_nonfinite_steps=2), DistInfo(device=torch.device('cpu')),
                        state=StepState())
