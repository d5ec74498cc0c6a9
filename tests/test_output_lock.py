"""One writer per output (issue: two runs into one --output both trained): `_lock` and everything that uses it.

Real processes throughout: several started together behind a barrier race for one folder, a holder is killed with
SIGKILL, a forked child outlives its parent. The command-line tests start `ggam-layers` processes that wait at a
file barrier after their imports, so that they reach the folder check at the same moment.
"""
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ggam_layers.predict as predict_module
import ggam_layers.train.compare as compare_module
import ggam_layers.train.seeds as seeds_module
from ggam_layers._lock import LOCK_NAME, OutputInUse, file_lock, folder_lock
from ggam_layers.cli import main
from ggam_layers.predict import Prediction, Predictions
from ggam_layers.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
TINY_ARGS = ['--preset', 'synthetic', '--model', 'test_resnet', '--img-size', '32', '--epochs', '1', '--batch-size',
             '4', '--threads', '1', '--no-progress', '--data-arg', 'num_classes=2', '--data-arg', 'samples_per_class=4']
TINY = dict(model='test_resnet', img_size=32, epochs=1, batch_size=4, eval_batch_size=8, threads=1, progress=False,
            dataset_kwargs={'num_classes': 2, 'samples_per_class': 4})
FORK = multiprocessing.get_context('fork')


# --- helpers ---------------------------------------------------------------------------------------------------------
def _race(folder, barrier, results, hold_s):
    """A process that claims `folder` once the barrier opens and reports what happened."""
    barrier.wait()
    try:
        with folder_lock(folder):
            results.put(('won', os.getpid(), ''))
            time.sleep(hold_s)  # still holding while the others try
    except OutputInUse as e:
        results.put(('refused', os.getpid(), str(e)))


def _hold(path, ready, kind='folder', fork_child=None):
    """Claim `path`, say so, then wait to be killed (optionally after forking a child that sleeps on)."""
    with (folder_lock(path) if kind == 'folder' else file_lock(path)):
        if fork_child is not None:
            child = os.fork()
            if child == 0:
                time.sleep(120)
                os._exit(0)
            fork_child.value = child
        ready.set()
        time.sleep(300)


class _Holder:
    """Another process that holds `path`'s lock until `kill()` (SIGKILL, as a crash or the OOM killer would)."""

    def __init__(self, path, kind='folder', fork_child=False):
        self.ready = FORK.Event()
        self.child = FORK.Value('i', 0) if fork_child else None
        self.proc = FORK.Process(target=_hold, args=(path, self.ready, kind, self.child), daemon=True)
        self.proc.start()
        assert self.ready.wait(30), 'the holder did not take the lock'
        self.pid = self.proc.pid

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)


@pytest.fixture
def holders():
    started = []

    def start(path, **kw):
        h = _Holder(path, **kw)
        started.append(h)
        return h

    yield start
    for h in started:
        if h.proc.is_alive():
            h.kill()
        if h.child is not None and h.child.value:
            try:
                os.kill(h.child.value, signal.SIGKILL)
            except ProcessLookupError:
                pass


_BARRIER_CLI = '''
import os, sys, time
import ggam_layers.cli, ggam_layers.train.cli, ggam_layers.predict  # imports first: the race is the folder check
ready, n = sys.argv[1], int(sys.argv[2])
open(os.path.join(ready, str(os.getpid())), 'w').close()
deadline = time.time() + 300
while len(os.listdir(ready)) < n and time.time() < deadline:
    time.sleep(0.005)
t0 = time.time()
try:
    code = ggam_layers.cli.main(sys.argv[3:])
except SystemExit as e:
    code = e.code
print(f'ELAPSED {time.time() - t0:.3f}', file=sys.stderr)
sys.exit(code)
'''


def _simultaneous(tmp_path, n, argv):
    """Start `n` `ggam-layers ARGV` processes that pass a barrier together; [(pid, returncode, stderr, seconds)]."""
    ready = tmp_path / f'barrier-{time.monotonic_ns()}'
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, '-c', _BARRIER_CLI, str(ready), str(n), *argv], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for _ in range(n)]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=540)
        elapsed = float(err.rsplit('ELAPSED ', 1)[1].split()[0]) if 'ELAPSED ' in err else None
        out.append((p.pid, p.returncode, err, elapsed))
    return out


def _one_trained_the_others_refused(runs, folder):
    winners = [r for r in runs if r[1] == 0]
    assert len(winners) == 1, [(rc, err[-600:]) for _, rc, err, _ in runs]
    pid = winners[0][0]
    for _, rc, err, elapsed in runs:
        if rc == 0:
            continue
        assert rc == 2, err[-2000:]
        assert f'output directory {folder} is in use by process {pid}' in err, err[-2000:]
        assert elapsed is not None and elapsed < 5, f'refused after {elapsed} s, not at once'


# --- the lock --------------------------------------------------------------------------------------------------------
def test_simultaneous_claims_exactly_one_wins_and_the_others_name_it(tmp_path):
    n = 6
    barrier, results = FORK.Barrier(n), FORK.Queue()
    procs = [FORK.Process(target=_race, args=(tmp_path / 'race', barrier, results, 3.0)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(30)
    won = [pid for kind, pid, _ in got if kind == 'won']
    assert len(won) == 1, got
    for kind, _, message in got:
        if kind == 'refused':
            assert f'output directory {tmp_path / "race"} is in use by process {won[0]}' in message, message
            assert LOCK_NAME in message and '--output' in message
    assert not (tmp_path / 'race').exists()  # released: the lock file and the folder it made are gone


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path, holders):
    holder = holders(tmp_path / 'run')
    with pytest.raises(OutputInUse, match=f'process {holder.pid}'):
        folder_lock(tmp_path / 'run').acquire()
    holder.kill()
    assert (tmp_path / 'run' / LOCK_NAME).is_file()  # left behind, naming a dead process
    with folder_lock(tmp_path / 'run') as lock:
        assert lock.held
        assert f'"pid": {os.getpid()}' in (tmp_path / 'run' / LOCK_NAME).read_text()
    assert not (tmp_path / 'run' / LOCK_NAME).exists()


def test_a_forked_child_of_a_killed_run_does_not_keep_its_lock(tmp_path, holders):
    holder = holders(tmp_path / 'run', fork_child=True)  # e.g. a DataLoader worker
    child = holder.child.value
    holder.kill()
    os.kill(child, 0)  # the child lives on
    with folder_lock(tmp_path / 'run') as lock:
        assert lock.held


def test_a_second_claim_in_one_process_is_refused_and_release_restores_the_folder(tmp_path):
    (tmp_path / 'kept').mkdir()
    (tmp_path / 'kept' / 'notes.txt').write_text('keep me')
    for folder in (tmp_path / 'kept', tmp_path / 'new' / 'deeper'):
        with folder_lock(folder) as lock:
            assert lock.held and (folder / LOCK_NAME).is_file()
            with pytest.raises(OutputInUse, match=f'output directory {folder} is in use by this process'):
                folder_lock(folder).acquire()
        assert not lock.held
    assert os.listdir(tmp_path / 'kept') == ['notes.txt']
    assert not (tmp_path / 'new').exists()  # the folders taking the lock made are removed, being empty


def test_file_lock_sits_beside_the_file(tmp_path):
    with file_lock(tmp_path / 'sub' / 'preds.csv', '--out file', 'another --out'):
        assert os.listdir(tmp_path / 'sub') == ['.preds.csv.lock']
        with pytest.raises(OutputInUse, match=r"--out file .*preds\.csv is in use by this process.*another --out"):
            file_lock(tmp_path / 'sub' / 'preds.csv', '--out file', 'another --out').acquire()
    assert not (tmp_path / 'sub').exists()


# --- train, --resume, --seeds, compare, predict --out --------------------------------------------------------------
@pytest.mark.slow
def test_simultaneous_train_runs_into_one_output_exactly_one_trains(tmp_path):
    runs = _simultaneous(tmp_path, 3, ['train', *TINY_ARGS, '--output', 'race'])
    _one_trained_the_others_refused(runs, 'race')
    assert (tmp_path / 'race' / 'model.safetensors').is_file() and not (tmp_path / 'race' / LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_of_one_run_twice_exactly_one_resumes(tmp_path):
    train(TrainConfig.from_preset('synthetic', **{**TINY, 'epochs': 2, 'stop_after': 1, 'output': str(tmp_path / 'r')}))
    runs = _simultaneous(tmp_path, 2, ['train', '--resume', 'r', '--no-progress'])
    _one_trained_the_others_refused(runs, 'r')
    assert sorted(p.name for p in (tmp_path / 'r' / 'checkpoints').iterdir()) == ['epoch-0001', 'epoch-0002']


def test_a_run_into_a_held_folder_is_refused_at_once_and_runs_after_the_holder_is_killed(tmp_path, holders, capsys):
    out = tmp_path / 'run'
    holder = holders(out)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        main(['train', *TINY_ARGS, '--output', str(out)])
    assert e.value.code == 2 and time.perf_counter() - t0 < 5
    assert f'output directory {out} is in use by process {holder.pid}' in capsys.readouterr().err
    assert os.listdir(out) == [LOCK_NAME]  # the refused run wrote nothing
    holder.kill()
    assert main(['train', *TINY_ARGS, '--output', str(out)]) == 0  # the killed run's lock file does not block
    assert (out / 'model.safetensors').is_file() and not (out / LOCK_NAME).exists()


def _fake_pair(cfg, *args, **kwargs):
    res = {'test_top1': 0.5, 'test_top5': 1.0, 'train_top1': 0.5}
    return {'ggam': res, 'plain': res}


def test_seeds_own_their_output_for_the_whole_run(tmp_path, holders, capsys, monkeypatch):
    out = tmp_path / 'seeds'
    holder = holders(out)
    with pytest.raises(SystemExit) as e:
        main(['train', *TINY_ARGS, '--seeds', '1', '2', '--output', str(out)])
    assert e.value.code == 2
    assert f'output directory {out} is in use by process {holder.pid}' in capsys.readouterr().err
    assert os.listdir(out) == [LOCK_NAME]
    holder.kill()
    seen = []

    def compare_checks_the_lock(cfg, *args, **kwargs):  # OUT is held between and during the seeds
        with pytest.raises(OutputInUse, match='in use by this process'):
            folder_lock(out).acquire()
        seen.append(cfg.seed)
        return _fake_pair(cfg)

    monkeypatch.setattr(seeds_module, 'train_compare', compare_checks_the_lock)
    assert main(['train', *TINY_ARGS, '--seeds', '1', '2', '--output', str(out)]) == 0
    assert seen == [1, 2] and not (out / LOCK_NAME).exists()


def test_compare_owns_its_output_for_both_models(tmp_path, monkeypatch):
    out = tmp_path / 'cmp'
    seen = []

    def train_checks_the_lock(cfg, *args, **kwargs):
        with pytest.raises(OutputInUse, match='in use by this process'):
            folder_lock(out).acquire()
        seen.append(Path(cfg.output).name)
        return {'test_top1': 0.5, 'test_top5': 1.0, 'train_top1': 0.5, 'epochs_done': 1, 'backbone': cfg.model}

    monkeypatch.setattr(compare_module, 'train', train_checks_the_lock)
    assert main(['train', '--compare-plain', *TINY_ARGS, '--output', str(out)]) == 0
    assert seen == ['ggam', 'plain'] and not (out / LOCK_NAME).exists()


def test_predict_out_is_refused_while_held_and_held_while_predicting(tmp_path, holders, capsys, monkeypatch):
    target = tmp_path / 'preds.csv'
    image = tmp_path / 'x.png'
    image.write_bytes(b'')
    holder = holders(target, kind='file')
    with pytest.raises(SystemExit) as e:
        main(['predict', 'ggam_test_resnet.synthetic', str(image), '--out', str(target)])
    assert e.value.code == 2
    assert f'--out file {target} is in use by process {holder.pid}' in capsys.readouterr().err
    assert not target.exists()
    holder.kill()

    def predict_checks_the_lock(*args, **kwargs):
        with pytest.raises(OutputInUse, match='in use by this process'):
            file_lock(target).acquire()
        return Predictions(rows=[Prediction(str(image), ('a',), (1.0,), (0,))], topk=1)

    monkeypatch.setattr(predict_module, 'predict', predict_checks_the_lock)
    assert main(['predict', 'ggam_test_resnet.synthetic', str(image), '--out', str(target)]) == 0
    assert target.read_text().startswith('path,label_1,score_1')
    assert sorted(os.listdir(tmp_path)) == ['preds.csv', 'x.png']


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_under_torchrun_every_rank_refuses_a_held_folder(tmp_path, holders):
    out = tmp_path / 'ddp'
    holder = holders(out)
    env = dict(ENV, GLOO_SOCKET_IFNAME='lo') if sys.platform.startswith('linux') else ENV
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1', '--nproc-per-node', '2', '--master-addr',
           '127.0.0.1', '--master-port', str(_free_port()), '-m', 'ggam_layers', 'train', *TINY_ARGS,
           '--output', str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)  # a hang would time out
    assert proc.returncode != 0
    assert proc.stderr.count(f'output directory {out} is in use by process {holder.pid}') == 2, proc.stderr[-3000:]
    assert os.listdir(out) == [LOCK_NAME]
