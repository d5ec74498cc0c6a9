"""Spatial Grad-CAM guidance (`ggam_layers.spatial_guidance`, `--guide spatial`), the ImageNet study's variant
(benchmarks/guidance_variants.py) and `train(loss_fn=...)`."""
import dataclasses
import json

import pytest
import torch
from conftest import load_benchmark

from ggam_layers import GGAMHead
from ggam_layers.train import TrainConfig, train

gv = load_benchmark('guidance_variants')
plan_mod = load_benchmark('ablation_plan')
report = load_benchmark('ablation_report')
budgets = load_benchmark('ablation_budgets')


def _reference_map(beta, a, eps):
    """The Grad-CAM map relu(sum_c beta_c A_c), normalised over positions, in float64, one sample at a time."""
    out = []
    for b in range(a.shape[0]):
        cam = torch.zeros(a.shape[2] * a.shape[3], dtype=torch.float64)
        for c in range(a.shape[1]):
            cam += beta[b, c].double() * a[b, c].double().flatten()
        cam = cam.clamp_min(0)
        m = cam / cam.sum() if cam.sum() > 0 else torch.full_like(cam, 1 / cam.numel())
        out.append((1 - eps) * m + eps / cam.numel())
    return torch.stack(out)


def test_position_target_is_the_normalised_gradcam_map_and_scale_free():
    g = torch.Generator().manual_seed(0)
    a, beta = torch.randn(3, 8, 4, 5, generator=g).double(), torch.randn(3, 8, generator=g).double()
    m = gv.gradcam_position_target(beta, a, eps=1e-3)
    torch.testing.assert_close(m, _reference_map(beta, a, 1e-3), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(m.sum(1), torch.ones(3, dtype=torch.float64))
    # the point of the variant: the scale of beta (1e-3 with real features) does not flatten the target
    torch.testing.assert_close(gv.gradcam_position_target(beta * 1e-6, a), m, rtol=1e-9, atol=1e-15)
    # a map that is zero everywhere gives the uniform distribution
    flat = gv.gradcam_position_target(-beta.abs(), a.abs())
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 20))


def test_spatial_guidance_loss_pulls_t_and_nothing_else():
    torch.manual_seed(0)
    head = GGAMHead(16, 5, rd_channels=4).double()
    x = torch.randn(4, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    out = head.forward_ggam(x)
    assert out.features is x  # the features the head explained travel with its output
    y = torch.tensor([0, 1, 2, 3])
    loss = gv.SpatialGuidanceLoss(lam=2.0)
    terms = loss.terms(out, y)
    m = gv.gradcam_position_target(out.cam_weights, x)
    t = out.spatial_weights.flatten(1)
    want = 0.5 * ((t * (t / m).log()).sum(1) + (m * (m / t).log()).sum(1)).mean()
    torch.testing.assert_close(terms.ggam, want)
    torch.testing.assert_close(terms.loss, terms.ce + 2.0 * want)
    assert terms.ggam > 0
    # the target is detached: the gradient reaches A only through the forward pass (T and the logits), so it equals
    # the gradient of the same expression with the target held as a constant
    g_loss, = torch.autograd.grad(terms.loss, x)
    out2 = head.forward_ggam(x)
    t2 = out2.spatial_weights.flatten(1)
    ce2 = torch.nn.functional.cross_entropy(out2.logits, y)
    const = m.detach()
    div2 = 0.5 * ((t2 * (t2 / const).log()).sum(1) + (const * (const / t2).log()).sum(1)).mean()
    g_ref, = torch.autograd.grad(ce2 + 2.0 * div2, x)
    torch.testing.assert_close(g_loss, g_ref)
    # T equal to the target: no divergence
    same = out._replace(spatial_weights=m.detach().view_as(out.spatial_weights))
    assert abs(float(loss.divergence(same))) < 1e-12


def test_train_takes_a_criterion_and_records_it(tmp_path):
    cfg = TrainConfig.from_preset('synthetic', model='test_resnet', img_size=64, epochs=1, batch_size=8,
                                  eval_batch_size=16, threads=1, progress=False, output=str(tmp_path / 'run'),
                                  dataset_kwargs={'num_classes': 4, 'samples_per_class': 6})
    res = train(cfg, loss_fn=gv.SpatialGuidanceLoss(lam=1.0))
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    expected = 'ggam_layers.spatial_guidance.SpatialGuidanceLoss: SpatialGuidanceLoss(lam=1.0, eps=0.001)'
    assert saved['loss_fn'].startswith(expected)
    assert res['train_ggam'] is not None and res['train_ggam'] > 0
    with pytest.raises(TypeError, match='loss_fn must have terms'):
        train(dataclasses.replace(cfg, output=str(tmp_path / 'bad')), loss_fn=torch.nn.CrossEntropyLoss())
    assert not (tmp_path / 'bad' / 'results.json').exists()


def test_variants_part_trains_each_variant_beside_the_uniform_control():
    budget = budgets.BUDGETS['imagenet7']
    plan = plan_mod.build_plan(budget, ['variants'])
    control = plan['variants_control']
    assert control.target == 'uniform' and control.lam == budget.lam and not control.variant
    assert [v for v, _ in plan['variants']] == list(gv.VARIANTS)
    keys = [s.key for s in plan['specs']]
    assert keys == [control.key, *(s.key for _, s in plan['variants'])] and len(set(keys)) == len(keys)
    assert plan['variants'][0][1].key == f'SC-lam{budget.lam:g}-spatial'
    assert 'variants' not in plan_mod.DEFAULT_PARTS and plan_mod.build_plan(budget)['variants'] == []


@pytest.mark.parametrize('per_seed,enters', [
    ([0.02, 0.03, 0.01, 0.025, -0.005], True),   # 4 of 5 ahead, mean above the spread
    ([0.02, 0.03, 0.01, -0.025, -0.005], False),  # 3 of 5
    ([0.10, 0.001, 0.001, 0.001, -0.09], False),  # 4 of 5 but inside the spread
    ([0.02, 0.03, 0.01], False),                  # three seeds are not five
])
def test_the_entry_rule(per_seed, enters):
    from ggam_layers.train.stats import paired
    diffs = paired({i: 0.5 + d for i, d in enumerate(per_seed)}, {i: 0.5 for i in range(len(per_seed))})
    assert report.enters_package(diffs) is enters


def test_guide_spatial_is_the_variant_the_study_trained(tmp_path):
    """`--guide spatial` (TrainConfig.guide) trains with `SpatialGuidanceLoss`: the same weights as passing it."""
    from ggam_layers.hub import load_checkpoint

    base = dict(model='test_resnet', img_size=64, epochs=1, batch_size=8, eval_batch_size=16, threads=1,
                progress=False, dataset_kwargs={'num_classes': 4, 'samples_per_class': 6})
    by_flag = train(TrainConfig.from_preset('synthetic', **base, guide='spatial', output=str(tmp_path / 'a')))
    by_hook = train(TrainConfig.from_preset('synthetic', **base, output=str(tmp_path / 'b')),
                    loss_fn=gv.SpatialGuidanceLoss(lam=1.0))
    assert by_flag['train_ggam'] == by_hook['train_ggam'] and by_flag['test_top1'] == by_hook['test_top1']
    a, b = load_checkpoint(tmp_path / 'a')[0].state_dict(), load_checkpoint(tmp_path / 'b')[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / 'a' / 'results.json').read_text())
    assert saved['loss_fn'] is None  # a built-in loss: config.json's guide says which
    with pytest.raises(ValueError, match='--guide spatial .* --cam-target standardized'):
        TrainConfig.from_preset('synthetic', guide='spatial', cam_target='standardized').validate()
    with pytest.raises(ValueError, match='--guide spatial .* --no-spatial-attn'):
        TrainConfig.from_preset('synthetic', guide='spatial', spatial_attn=False).validate()
