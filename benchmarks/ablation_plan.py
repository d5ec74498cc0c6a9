"""What `benchmarks.ablation` trains: the paper's Table 3, the Grad-CAM targets (with the uniform control), one
configuration as a `RunSpec`, and `build_plan`, the configurations of each part with the shared ones trained once."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from benchmarks.ablation_budgets import Budget
from benchmarks.guidance_variants import VARIANTS
from ggam_layers.loss import CAM_TARGETS, CamTarget, target_log_probs

__all__ = ['DEFAULT_PARTS', 'PAPER_TABLE3', 'UNIFORM_TEMPERATURE', 'TARGETS', 'TARGET_TEXT', 'PARTS', 'TABLE2',
           'RunSpec', 'make_spec', 'build_plan', 'check_uniform_control', 'target_columns', 'target_options']

# Table 3 of the paper (CUB-200-2011, ResNet-50): (spatial attention, channel attention, GGAM loss) -> top-1 %
PAPER_TABLE3: List[Tuple[bool, bool, bool, float]] = [
    (False, False, False, 85.10),
    (True, False, False, 85.61),
    (False, True, False, 85.39),
    (True, True, False, 86.86),
    (False, False, True, 85.30),
    (True, False, True, 86.58),
    (False, True, True, 86.26),
    (True, True, True, 88.45),
]

# The temperature on the standardised beta through which earlier studies reached the uniform control: beta / 1e30
# is below 1e-28 (|z| <= sqrt(C)), so exp rounds it to exactly 1 in float32 and the target is exactly 1/C.
# `--cam-target uniform` (`GGAMLoss(target='uniform')`) trains to the same weights (tests/test_cam_target.py).
UNIFORM_TEMPERATURE = 1e30

# the GGAMLoss target of each row; 'uniform' is the control without Grad-CAM
TARGETS: Dict[str, CamTarget] = {
    'literal': CAM_TARGETS['paper'],
    'authors': CAM_TARGETS['authors'],
    'standardize': CAM_TARGETS['standardized'],
    'standardize_softmax': CamTarget(squash='softmax', norm='standardize'),
    'uniform': CAM_TARGETS['uniform'],
}


def target_options(name: str) -> Dict[str, Any]:
    """`TrainConfig` overrides of a target of `TARGETS`: `cam_target` for a named one, else its four parts."""
    target = TARGETS[name]
    named = next((n for n, t in CAM_TARGETS.items() if t == target), None)
    if named is not None:
        return dict(cam_target=named)
    return dict(squash=target.squash, kl=target.kl, target_norm=target.norm, cam_temperature=target.temperature)


def target_columns(name: str) -> Dict[str, Any]:
    """The report's columns of a target: squash, kl, target_norm, cam_temperature ('–' where the control has none)."""
    t = TARGETS[name]
    if t.uniform:
        return dict(squash='–', kl=t.kl, target_norm='–', cam_temperature=None)
    return dict(squash=t.squash, kl=t.kl, target_norm=t.norm, cam_temperature=t.temperature)
TARGET_TEXT = {
    'literal': 'paper as written: sigmoid(beta) normalised, symmetric KL',
    'authors': "authors' code: softmax(beta), KL(S || beta~)",
    'standardize': 'beta standardised per sample, then sigmoid, symmetric KL',
    'standardize_softmax': 'beta standardised per sample, then softmax, symmetric KL',
    'uniform': 'control, no Grad-CAM: symmetric KL towards the uniform 1/C',
}
# 'variants' (beyond the paper: `guidance_variants`, each against the uniform control) is run when named
PARTS = ('ablation', 'sweep', 'target', 'rescale', 'table2', 'variants')
DEFAULT_PARTS = ('ablation', 'sweep', 'target', 'rescale', 'table2')
# the paper's Table 2 comparators (`GGAMModel(attention=...)`), trained with cross-entropy where GGAM sits
TABLE2 = ('se', 'cbam')


@dataclass(frozen=True)
class RunSpec:
    """One configuration (trained once per seed).

    Attributes:
        spatial_attn / channel_attn: GGAM head options.
        lam: Weight of the GGAM loss (0: cross-entropy only).
        target: Key of `TARGETS` ('none' when lam is 0).
        channel_rescale: The channel-only head hands the classifier C * S * A (`--channel-rescale`).
        attention: 'ggam', or a Table 2 comparator ('se', 'cbam': cross-entropy only, the GGAM options unused).
        variant: A criterion of `benchmarks.guidance_variants` in place of the GGAM loss ('': the GGAM loss).
    """
    spatial_attn: bool = True
    channel_attn: bool = True
    lam: float = 0.0
    target: str = 'none'
    channel_rescale: bool = False
    attention: str = 'ggam'
    variant: str = ''

    @property
    def key(self) -> str:
        if self.attention != 'ggam':
            return f'{self.attention}-lam0-none'
        attn = ('S' if self.spatial_attn else '') + ('C' if self.channel_attn else '') or 'plain'
        return f'{attn}{"x" if self.channel_rescale else ""}-lam{self.lam:g}-{self.variant or self.target}'

    def options(self) -> Dict[str, Any]:
        """`TrainConfig` overrides of this configuration."""
        if self.attention != 'ggam':
            return dict(attention=self.attention, lam=0.0)
        opts: Dict[str, Any] = dict(spatial_attn=self.spatial_attn, channel_attn=self.channel_attn, lam=self.lam)
        if self.channel_rescale:
            opts['channel_rescale'] = True
        opts.update(target_options('literal' if self.target == 'none' else self.target))
        return opts


def make_spec(spatial: bool = True, channel: bool = True, lam: float = 0.0, target: str = 'literal') -> RunSpec:
    """A GGAM configuration; without the loss (lam 0) its target is 'none'."""
    return RunSpec(spatial, channel, float(lam), target if lam > 0 else 'none')


def build_plan(budget: Budget, parts: Sequence[str] = DEFAULT_PARTS) -> Dict[str, Any]:
    """The configurations of each part, and the distinct configurations to train (shared ones are trained once).

    Returns:
        {'ablation': [(spatial, channel, loss, paper, spec)], 'sweep': [(lam, spec)], 'sweep_reference': spec,
        'target': [(target, lam, spec)], 'target_reference': spec, 'rescale': [(loss, spec)] (the channel-only
        head with the C * S gain, without and with the loss), 'table2': [(attention, spec)] (SE and CBAM, against
        the plain head and GGAM), 'variants': [(variant, spec)] (beyond the paper, against 'variants_control', the
        uniform control at the same lambda), 'specs': [distinct specs in order]}
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f'parts must be among {PARTS}, got {unknown}')
    for name in (budget.ablation_target, *budget.targets):
        if name not in TARGETS:
            raise ValueError(f'target {name!r} is not one of {tuple(TARGETS)}')
    reference = make_spec(True, True, 0.0)
    plan: Dict[str, Any] = {'ablation': [], 'sweep': [], 'target': [], 'rescale': [], 'table2': [], 'variants': [],
                            'sweep_reference': reference, 'target_reference': reference}
    if 'ablation' in parts:
        # without channel attention the loss is a constant with no gradient: such a row trains exactly as its row
        # without the loss (the first study ran both and got identical numbers), so it is not trained twice
        plan['ablation'] = [(s, c, loss, paper, make_spec(s, c, budget.lam if loss and c else 0.0,
                                                          budget.ablation_target))
                            for s, c, loss, paper in PAPER_TABLE3]
    if 'sweep' in parts:
        plan['sweep'] = [(float(lam), make_spec(True, True, lam, budget.ablation_target)) for lam in budget.lambdas]
    if 'target' in parts:
        plan['target'] = [(t, float(lam), make_spec(True, True, lam, t)) for t in budget.targets
                          for lam in budget.target_lambdas]
    if 'rescale' in parts:
        plan['rescale'] = [(loss, dataclasses.replace(make_spec(False, True, budget.lam if loss else 0.0,
                                                             budget.ablation_target), channel_rescale=True))
                           for loss in (False, True)]
    if 'table2' in parts:  # SE and CBAM beside plain and GGAM (the paper's Table 2 compares the three)
        plan['table2'] = [(a, RunSpec(attention=a)) for a in TABLE2]
        plan.update(table2_lam=budget.lam, table2_target=budget.ablation_target)
    if 'variants' in parts:  # each variant against the uniform control, the same lambda and seeds
        plan['variants'] = [(v, dataclasses.replace(make_spec(True, True, budget.lam, 'literal'), variant=v))
                            for v in VARIANTS]
        plan['variants_control'] = make_spec(True, True, budget.lam, 'uniform')
    specs: List[RunSpec] = []
    wanted = [row[-1] for row in plan['ablation']] + [row[-1] for row in plan['rescale']]
    if plan['table2']:
        wanted += [make_spec(False, False, 0.0), reference, make_spec(True, True, budget.lam, budget.ablation_target),
                   *(row[-1] for row in plan['table2'])]
    if plan['sweep'] or plan['target']:
        wanted.append(reference)
    wanted += [row[-1] for row in plan['sweep']] + [row[-1] for row in plan['target']]
    if plan['variants']:
        wanted += [plan['variants_control'], *(row[-1] for row in plan['variants'])]
    for spec in wanted:
        if spec not in specs:
            specs.append(spec)
    plan['specs'] = specs
    return plan


def check_uniform_control(channels: int = 96) -> None:
    """The control's target must be exactly 1/C whatever the scale of beta."""
    for scale in (1e-6, 1e-3, 1.0, 1e6):
        beta = torch.randn(4, channels, generator=torch.Generator().manual_seed(0)) * scale
        log_q = target_log_probs(beta, TARGETS['uniform'])
        if not torch.equal(log_q, torch.full_like(log_q, -math.log(channels))):
            raise RuntimeError(f'the uniform control target is not exactly 1/C at beta scale {scale}')
