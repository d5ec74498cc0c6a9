"""What `benchmarks.timm_coverage` checks of one timm architecture: which timm module defines it, its input sizes,
and the two checks, `wrap_check` (wrapped on the meta device: wrapped, refused or failed) and `sample_check` (one real
train step on the CPU and the closed-form beta against autograd). Each returns a row and catches its own errors."""
import logging
import math
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from timm.models import get_pretrained_cfg, model_entrypoint

from ggam_layers.loss import GGAMLoss
from ggam_layers.model import UnsupportedBackboneError, wrap_timm_model

__all__ = ['NUM_CLASSES', 'CHECKS', 'model_module', 'list_architectures', 'input_sizes', 'sample_size', 'error_fields',
           'wrap_check', 'sample_check', 'run_check']

NUM_CLASSES = 10


# --- model discovery --------------------------------------------------------------------------------------------------
def model_module(name: str) -> str:
    """The timm module defining a model's entrypoint, without the `timm.models.` prefix (e.g. 'resnet')."""
    module = model_entrypoint(name).__module__
    return module[len('timm.models.'):] if module.startswith('timm.models.') else module


def list_architectures() -> List[str]:
    """`timm.list_models()` without entrypoints registered outside timm (our own `ggam_*` models)."""
    return [n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('timm.models.')]


def input_sizes(name: str) -> Dict[str, Any]:
    """'input_size', 'min_input_size' and 'fixed_input_size' of the model's pretrained_cfg (224 px without one)."""
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return {'input_size': [3, 224, 224], 'min_input_size': None, 'fixed_input_size': False}
    return {
        'input_size': list(cfg.input_size),
        'min_input_size': list(cfg.min_input_size) if cfg.min_input_size else None,
        'fixed_input_size': bool(cfg.fixed_input_size),
    }


def sample_size(sizes: Dict[str, Any]) -> Tuple[int, int]:
    """The input size of the real run: 'min_input_size' unless the model is fixed-size, else 'input_size'."""
    size = sizes['input_size'] if sizes['fixed_input_size'] or not sizes['min_input_size'] else sizes['min_input_size']
    return int(size[-2]), int(size[-1])


def error_fields(e: BaseException) -> Dict[str, Any]:
    """The 'error', 'error_last_line' and 'traceback' fields of a failed row."""
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    last = ''.join(lines).strip().splitlines()[-1]
    return {'error': f'{type(e).__name__}: {e}'[:2000], 'error_last_line': last[:500],
            'traceback': ''.join(lines[-6:])[-4000:]}


class _ProbeLog(logging.Handler):
    """Collects `ggam_layers.model` debug messages (meta probe fell back to the CPU, meta backward failed)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage()[:500])


def _with_probe_log(fn):
    def wrapped(*args, **kwargs):
        handler = _ProbeLog()
        logger = logging.getLogger('ggam_layers.model')
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        try:
            result = fn(*args, **kwargs)
        finally:
            logger.removeHandler(handler)
        if handler.messages:
            result['probe_log'] = handler.messages
        return result

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


# --- part 1: wrap every architecture on the meta device ---------------------------------------------------------------
@_with_probe_log
def wrap_check(name: str) -> Dict[str, Any]:
    """Wrap one architecture on the meta device and classify the outcome.

    Returns:
        A row with 'status' ('wrapped', 'refused' or 'failed'), the layout or the reason / error, parameter counts
        and input sizes.
    """
    row: Dict[str, Any] = {'model': name, 'module': model_module(name), **input_sizes(name)}
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        model = wrap_timm_model(name, num_classes=NUM_CLASSES, device='meta')
    except UnsupportedBackboneError as e:
        row.update(status='refused', reason=str(e))
        try:  # count the backbone's parameters anyway, for picking the sample
            backbone = timm.create_model(name, num_classes=0, device='meta')
            row['params'] = sum(p.numel() for p in backbone.parameters())
        except Exception as e2:  # noqa: BLE001
            row['params_error'] = f'{type(e2).__name__}: {e2}'[:500]
    except Exception as e:  # noqa: BLE001  (anything else is a bug in the wrapper)
        row.update(status='failed', **error_fields(e))
    else:
        layout = model.layout
        row.update(
            status='wrapped',
            fmt=layout.fmt,
            num_prefix_tokens=layout.num_prefix_tokens,
            reduction=layout.reduction,
            grid_rule=layout.grid_rule,
            num_features=int(model.num_features),
            params=sum(p.numel() for p in model.backbone.parameters()),
            head_params=sum(p.numel() for p in model.head.parameters()),
            unused_backbone_params=len(model.unused_backbone_params),
            shared_param_aliases=sum(1 for _ in model.backbone.named_parameters(remove_duplicate=False))
            - sum(1 for _ in model.backbone.parameters()),
            on_meta=all(p.device.type == 'meta' for p in model.parameters()),
        )
    row['seconds'] = round(time.perf_counter() - t0, 3)
    row['cpu_seconds'] = round(time.process_time() - c0, 3)
    return row


# --- part 2: a real CPU step on one model per module ------------------------------------------------------------------
def _finite_grad(p: torch.nn.Parameter) -> Optional[str]:
    if p.grad is None:
        return 'None'
    if not torch.isfinite(p.grad).all():
        return 'not finite'
    return None


@_with_probe_log
def sample_check(name: str, img_size: Sequence[int], beta_rtol: float = 1e-4, seed: int = 0) -> Dict[str, Any]:
    """One real train step and the closed-form vs autograd beta check on the CPU.

    Args:
        name: timm architecture.
        img_size: (H, W) of the input.
        beta_rtol: Largest accepted max |beta_closed - beta_autograd| / max |beta_autograd|.
        seed: Seed of the weights, images and targets.

    Returns:
        A row with 'status' ('pass', 'refused' or 'failed'), the stage reached and the measured values.
    """
    h, w = int(img_size[0]), int(img_size[1])
    row: Dict[str, Any] = {'model': name, 'module': model_module(name), 'img_size': [h, w], 'batch_size': 2}
    t0, c0 = time.perf_counter(), time.process_time()
    stage = 'build'
    checks: Dict[str, Any] = {}
    try:
        torch.manual_seed(seed)
        model = wrap_timm_model(name, num_classes=NUM_CLASSES)
        row['fmt'] = model.layout.fmt
        row['num_prefix_tokens'] = model.layout.num_prefix_tokens
        row['params'] = sum(p.numel() for p in model.parameters())
        left = [n for n, t in (*model.named_parameters(remove_duplicate=False),
                               *model.named_buffers(remove_duplicate=False)) if t.is_meta]
        if left:
            raise AssertionError(f'{len(left)} parameters / buffers left on the meta device after construction (the '
                                 f'probe did not restore them), e.g. {left[:3]}')
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, h, w, generator=g)
        target = torch.tensor([1, 7])

        stage = 'forward'
        model.train()
        logits = model(x)
        if tuple(logits.shape) != (2, NUM_CLASSES):
            raise AssertionError(f'model(x) gives shape {tuple(logits.shape)}, expected (2, {NUM_CLASSES})')
        if not torch.isfinite(logits).all():
            raise AssertionError('model(x) gives non-finite logits')

        stage = 'forward_ggam'
        out = model.forward_ggam(x)
        checks['channel_weights_shape'] = list(out.channel_weights.shape)
        checks['spatial_weights_shape'] = list(out.spatial_weights.shape)
        if tuple(out.cam_weights.shape) != (2, model.num_features):
            raise AssertionError(
                f'cam_weights shape {tuple(out.cam_weights.shape)}, expected (2, {model.num_features})')

        stage = 'loss'
        terms = GGAMLoss().terms(out, target)
        checks.update(loss=float(terms.loss), ce=float(terms.ce), ggam=float(terms.ggam))
        if not torch.isfinite(terms.loss):
            raise AssertionError(f'GGAMLoss is not finite: {float(terms.loss)}')

        stage = 'backward'
        terms.loss.backward()
        attn = model.head.attn
        head_params = {'head.attn.fc1.weight': attn.fc1.weight, 'head.attn.fc1.bias': attn.fc1.bias,
                       'head.attn.fc2.weight': attn.fc2.weight, 'head.attn.fc2.bias': attn.fc2.bias,
                       'head.fc.weight': model.head.fc.weight}
        bad = {n: why for n, p in head_params.items() if (why := _finite_grad(p))}
        if bad:
            raise AssertionError(f'bad head gradients: {bad}')
        checks['attn_grad_norm'] = float(torch.cat([attn.fc1.weight.grad.flatten(), attn.fc2.weight.grad.flatten()])
                                         .norm())
        trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
        no_grad = [n for n, p in trainable if p.grad is None]
        checks['backbone_trainable_params'] = len(trainable)
        checks['backbone_params_without_grad'] = len(no_grad)
        if no_grad:
            checks['backbone_params_without_grad_names'] = no_grad[:10]
        if any(p.grad is not None and not torch.isfinite(p.grad).all() for _, p in trainable):
            raise AssertionError('non-finite backbone gradients')

        stage = 'beta'
        model.eval()
        model.zero_grad(set_to_none=True)
        if not model.head.uses_closed_form():
            raise AssertionError('the head does not use the closed form in eval mode')
        closed = model.forward_ggam(x)
        model.head.closed_form = False
        try:
            auto = model.forward_ggam(x)
        finally:
            model.head.closed_form = True
        if not torch.equal(closed.classes, auto.classes):
            raise AssertionError(f'explained classes differ: {closed.classes.tolist()} vs {auto.classes.tolist()}')
        scale = float(auto.cam_weights.abs().max())
        err = float((closed.cam_weights - auto.cam_weights).abs().max())
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
        checks.update(beta_max_abs=scale, beta_max_abs_err=err, beta_rel_err=rel)
        if not rel <= beta_rtol:
            raise AssertionError(f'closed-form beta differs from autograd beta: relative error {rel:.3g} > {beta_rtol}')
        row['status'] = 'pass'
    except UnsupportedBackboneError as e:
        row.update(status='refused', reason=str(e))
    except Exception as e:  # noqa: BLE001
        row.update(status='failed', **error_fields(e))
    row['stage'] = stage
    row['checks'] = checks
    row['seconds'] = round(time.perf_counter() - t0, 3)
    row['cpu_seconds'] = round(time.process_time() - c0, 3)
    return row


CHECKS = {'wrap': wrap_check, 'sample': sample_check}


def run_check(kind: str, *args: Any) -> Dict[str, Any]:
    """One check (a key of `CHECKS`) with its arguments; an exception it does not catch itself is a failed row."""
    try:
        return CHECKS[kind](*args)
    except BaseException as e:  # noqa: BLE001  (the checks catch their own; this is a last resort)
        return {'status': 'failed', **error_fields(e)}
