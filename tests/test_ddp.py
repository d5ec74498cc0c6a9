"""DDP: `torchrun --nproc-per-node 2` of the real command line (gloo on the CPU, localhost) against one process.

The model is GGAM on timm's `test_convnext`: LayerNorm normalises each sample on its own and the GGAM head has no
batch coupling, so every sample's loss and gradient are the same whether it sits in a batch of 8 or in a rank's
batch of 4. The DDP gradient (mean over ranks of each rank's batch mean) is then exactly the single-process mean over
the same 8 images (the samplers guarantee that the ranks' batches at a step together are the single-process batch,
and the augmentation of an image depends only on (seed, epoch, index)). Only the order of float32 additions differs
(the all-reduce), so weights agree to float32 rounding accumulated over a few SGD steps: we allow 1e-5 absolute +
1e-4 relative. A BatchNorm backbone would NOT match: each rank normalises with its own batch's statistics (4 images
instead of 8) unless `--sync-bn` is used, so that comparison would measure BatchNorm, not the DDP plumbing.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ggam_layers.train import TrainConfig, evaluate, train

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(model='test_convnext', dataset_kwargs={'num_classes': 4, 'samples_per_class': 8}, img_size=64, epochs=2,
              batch_size=8, eval_batch_size=8, opt='sgd', lr=0.05, warmup_epochs=0.5, threads=1, progress=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _cli_args(cfg: dict) -> list:
    args = ['--preset', 'synthetic',
            '--model', cfg['model'], '--img-size', str(cfg['img_size']), '--epochs', str(cfg['epochs']),
            '--batch-size', str(cfg['batch_size']), '--eval-batch-size', str(cfg['eval_batch_size']),
            '--opt', cfg['opt'], '--lr', str(cfg['lr']), '--warmup-epochs', str(cfg['warmup_epochs']),
            '--threads', '1', '--no-progress']
    for k, v in cfg['dataset_kwargs'].items():
        args += ['--data-arg', f'{k}={v}']
    return args


def _torchrun(args: list) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    if sys.platform.startswith('linux'):
        env['GLOO_SOCKET_IFNAME'] = 'lo'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc-per-node', '2',
           '--master-addr', '127.0.0.1', '--master-port', str(_free_port()), '-m', 'ggam_layers', *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_two_cpu_processes_match_one(tmp_path):
    ddp_out = tmp_path / 'ddp'
    _torchrun(['train', *_cli_args(COMMON), '--output', str(ddp_out)])

    ddp = json.loads((ddp_out / 'results.json').read_text())
    assert ddp['world_size'] == 2 and ddp['finished']
    assert ddp['replica_max_abs_diff'] == 0.0  # both ranks hold identical weights and buffers
    # only rank 0 wrote: one set of files, one row per epoch
    assert len((ddp_out / 'metrics.jsonl').read_text().splitlines()) == COMMON['epochs']

    single = train(TrainConfig.from_preset('synthetic', output=str(tmp_path / 'single'), **COMMON))
    assert single['world_size'] == 1
    wd, ws = load_file(str(ddp_out / 'model.safetensors')), load_file(str(tmp_path / 'single' / 'model.safetensors'))
    assert wd.keys() == ws.keys()
    for k in ws:
        torch.testing.assert_close(wd[k], ws[k], atol=1e-5, rtol=1e-4, msg=k)
    # metrics were reduced over the ranks: the same images, the same losses
    ddp_rows = [json.loads(x) for x in (ddp_out / 'metrics.jsonl').read_text().splitlines()]
    for rd, rs in zip(ddp_rows, single['history']):
        assert rd['train_loss'] == pytest.approx(rs['train_loss'], rel=1e-4)
        assert rd['train_top1'] == pytest.approx(rs['train_top1'], abs=1 / 32 + 1e-9)
        assert rd['test_loss'] == pytest.approx(rs['test_loss'], rel=1e-4)
        assert rd['test_top1'] == pytest.approx(rs['test_top1'], abs=1 / 32 + 1e-9)  # a near-tie may flip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_batchnorm_replicas_agree(tmp_path):
    """With BatchNorm each rank updates its running statistics with its own batch; after each epoch rank 0's are
    broadcast, so the replicas end identical and the sharded evaluation is the evaluation of rank 0's checkpoint."""
    out = tmp_path / 'bn'
    cfg = dict(COMMON, model='test_resnet', epochs=1)
    _torchrun(['train', *_cli_args(cfg), '--output', str(out)])
    ddp = json.loads((out / 'results.json').read_text())
    assert ddp['world_size'] == 2 and ddp['replica_max_abs_diff'] == 0.0
    res = evaluate(str(out), progress=False)  # one process, the saved (rank 0) weights
    assert res['count'] == 32
    assert res['top1'] == pytest.approx(ddp['test_top1'], abs=1 / 32 + 1e-9)
    assert res['loss'] == pytest.approx(ddp['test_loss'], rel=1e-4)


def _finite_decision_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1's loss is NaN at every update; rank 0's is finite. Both must skip, count, and stop together."""
    import torch.distributed as dist
    import torch.nn as nn

    from ggam_layers.train.distributed import DistInfo
    from ggam_layers.train.loop import StepOptions, StepState, TrainingDiverged, finish_update

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    info = DistInfo(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opts = StepOptions(max_nonfinite_steps=2)
    state = StepState()
    events = []
    for update in range(4):
        model(torch.ones(1, 3)).sum().backward()  # finite gradients on both ranks: only the loss flag differs
        finite = torch.tensor(rank == 0)
        try:
            finish_update(model, list(model.parameters()), opt, None, finite, opts, state, 0, update, info)
            events.append(('ok', state.skipped, state.skipped_in_a_row))
        except TrainingDiverged:
            events.append(('diverged', state.skipped, state.skipped_in_a_row))
            break
    Path(out, f'rank{rank}.json').write_text(json.dumps({'events': events, 'weight': model.weight.tolist()}))
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_nonfinite_decision_is_the_same_on_every_rank(tmp_path):
    """A NaN loss on one rank skips the update on all ranks: same skip counts, same weights, the divergence stop on
    the same update everywhere (a rank alone would stop while the others wait in the next collective)."""
    import torch.multiprocessing as mp

    if sys.platform.startswith('linux'):
        os.environ.setdefault('GLOO_SOCKET_IFNAME', 'lo')
    mp.spawn(_finite_decision_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['events'] == r1['events'] == [['ok', 1, 1], ['ok', 2, 2], ['diverged', 3, 3]]
    assert r0['weight'] == r1['weight']
