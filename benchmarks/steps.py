"""The training steps that `benchmarks.step_time` compares, on the same timm backbone and inputs: a `Setting`
(backbone, input size, batch), the model of each method (plain timm, GGAM fused / unfused / autograd beta), our
one-backward `TrainStep`, the authors' two-backward `AuthorsStep` (a copy of the step of their cars_sp_CAM.py) and
`build_step`, which builds either on a fresh model."""
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from ggam_layers import GGAMLoss, wrap_timm_model
from ggam_layers.kernels import triton_available

__all__ = ['METHODS', 'COMPILABLE', 'FUSED', 'AMP_DTYPES', 'Setting', 'autocast', 'build_model', 'TrainStep',
           'AuthorsStep', 'build_step', 'step_inputs', 'fused_differs', 'step_configs', 'config_label']


METHODS = ('plain', 'ggam', 'ggam_unfused', 'ggam_autograd', 'authors')
COMPILABLE = ('plain', 'ggam', 'ggam_unfused', 'ggam_autograd')
# the head's `fused` for the 'ggam' method: 'auto' (fused on CUDA), or True with --force-fused (interpreter dry runs)
FUSED = {'ggam': 'auto'}
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass(frozen=True)
class Setting:
    """A backbone at an input size and batch size."""
    model: str
    img_size: int
    batch: int

    @classmethod
    def parse(cls, text: str) -> 'Setting':
        """'resnet50:448:2' -> Setting('resnet50', 448, 2)."""
        try:
            name, img, batch = text.split(':')
            return cls(name, int(img), int(batch))
        except ValueError:
            raise ValueError(f'a setting is NAME:IMG_SIZE:BATCH such as resnet50:448:2, got {text!r}') from None

    def __str__(self) -> str:
        return f'{self.model}:{self.img_size}:{self.batch}'


def autocast(device: str, amp: str):
    """torch.autocast for an `AMP_DTYPES` key ('none': no autocast)."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device_type=device, dtype=dtype) if dtype is not None else nullcontext()



def build_model(method: str, setting: Setting, num_classes: int, device: str, channels_last: bool) -> nn.Module:
    """The plain timm model or the GGAM-wrapped one, random weights, in train mode."""
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if method == 'plain':
        model = timm.create_model(setting.model, num_classes=num_classes, pretrained=False)
    else:
        model = wrap_timm_model(setting.model, num_classes=num_classes, closed_form=method != 'ggam_autograd')
        # the authors' hooks need D, so their head takes the PyTorch path; so does the 'unfused' baseline
        model.head.fused = FUSED['ggam'] if method == 'ggam' else 'auto' if method == 'ggam_autograd' else False
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model.train()


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)


class TrainStep:
    """One forward and one backward: `zero_grad`, loss (under autocast), `loss.backward()`, `optimizer.step()`."""

    def __init__(
            self, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, device: str, amp: str,
    ):
        self.model, self.loss_fn, self.optimizer, self.device, self.amp = model, loss_fn, optimizer, device, amp

    def grads(self, x: torch.Tensor, y: torch.Tensor, reference: bool = False) -> Tuple[torch.Tensor, Any]:
        """Everything but the optimizer step; with `reference`, also the exact gradient of the loss (autograd.grad)."""
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp):
            loss = self.loss_fn(x, y)
        return self._backward(loss, reference)

    def _backward(self, loss: torch.Tensor, reference: bool) -> Tuple[torch.Tensor, Any]:
        """`loss.backward()`; with `reference`, first the exact gradient of the loss (autograd.grad)."""
        ref = None
        if reference:
            params = [p for p in self.model.parameters() if p.requires_grad]
            ref = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        loss.backward()
        return loss.detach(), ref

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss, _ = self.grads(x, y)
        self.optimizer.step()
        return loss


class AuthorsStep(TrainStep):
    """The training step of the authors' cars_sp_CAM.py, on a GGAM model (see the module docstring).

    As in their `Spatial_SEModule`, a forward hook stores S (softmax of the channel-attention logits) and registers a
    tensor hook on the attention output D that appends its gradient to a list.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: str, amp: str):
        self.model, self.optimizer, self.device, self.amp = model, optimizer, device, amp
        self.gradients: List[torch.Tensor] = []
        self.sig: Optional[torch.Tensor] = None
        attn = model.head.attn
        self._handles = [attn.register_forward_hook(self._hook_output), attn.fc2.register_forward_hook(self._hook_sig)]

    def _hook_output(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.gradients = []
        if output.requires_grad:
            output.register_hook(self.gradients.append)

    def _hook_sig(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.sig = (output / self.model.head.attn.temperature).softmax(dim=1)

    def grads(self, x: torch.Tensor, y: torch.Tensor, reference: bool = False) -> Tuple[torch.Tensor, Any]:
        """Their step without `optimizer.step()`; with `reference`, also the exact gradient of their loss."""
        with autocast(self.device, self.amp):
            outputs = self.model(x)
        one_hot = outputs.max(1, keepdim=True)[0]
        sig = self.sig
        self.optimizer.zero_grad(set_to_none=True)
        one_hot.backward(torch.ones_like(one_hot), retain_graph=True)
        grad_val = self.gradients[-1].detach()
        weights = grad_val.float().mean(dim=(2, 3)).softmax(dim=1)
        kl_loss = F.kl_div(weights.log(), sig.float(), reduction='sum')
        loss = F.cross_entropy(outputs.float(), y) + kl_loss
        return self._backward(loss, reference)

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()


def build_step(
        method: str,
        setting: Setting,
        num_classes: int = 200,
        device: str = 'cpu',
        amp: str = 'none',
        channels_last: bool = False,
        compiled: bool = False,
        lam: float = 1.0,
) -> Tuple[Callable, nn.Module]:
    """A training step of `method` on a freshly built model.

    Args:
        method: One of `METHODS`.
        setting: Backbone, input size, batch size.
        num_classes: K.
        device: 'cpu' or 'cuda'.
        amp: 'none', 'bf16' or 'fp16' autocast.
        channels_last: Model (and the caller's inputs) in channels_last.
        compiled: `torch.compile(fullgraph=True)` the forward and loss (the backward is compiled with it).
        lam: lambda of `GGAMLoss`.

    Returns:
        The step (call it with images and targets) and the model.
    """
    model = build_model(method, setting, num_classes, device, channels_last)
    opt = _optimizer(model)
    if method == 'authors':
        if compiled:
            raise ValueError("the authors' step (hooks, retain_graph, two backwards) is not compiled")
        return AuthorsStep(model, opt, device, amp), model
    if method == 'plain':
        def loss_fn(x, y):
            return F.cross_entropy(model(x).float(), y)
    else:
        crit = GGAMLoss(lam=lam)

        def loss_fn(x, y):
            return crit(model.forward_ggam(x), y)
    if compiled:
        loss_fn = torch.compile(loss_fn, fullgraph=True)
    return TrainStep(model, loss_fn, opt, device, amp), model


def step_inputs(setting: Setting, num_classes: int, device: str, channels_last: bool, seed: int = 0):
    """Seeded random images and targets of a setting's shape."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(setting.batch, 3, setting.img_size, setting.img_size, generator=g).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (setting.batch,), generator=g).to(device)
    return x, y



def fused_differs(device: str) -> bool:
    """Whether 'ggam' (fused='auto' or forced) and 'ggam_unfused' run different head code on `device`."""
    return FUSED['ggam'] is True or (device == 'cuda' and triton_available())


def step_configs(methods: Sequence[str], compile_methods: Sequence[str]) -> List[Tuple[str, bool]]:
    """(method, compiled) of every configuration: each method eager, then the compilable ones compiled."""
    cfgs = [(m, False) for m in methods]
    cfgs += [(m, True) for m in compile_methods if m in COMPILABLE]
    return cfgs


def config_label(method: str, compiled: bool) -> str:
    """A configuration's name in the result rows: 'ggam' or 'ggam (compiled)'."""
    return method + (' (compiled)' if compiled else '')

