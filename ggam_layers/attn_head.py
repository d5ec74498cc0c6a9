"""The paper's Table 2 comparators as a head: a timm attention module (SE or CBAM) where GGAM sits.

Xu et al. compare GGAM with SENet and CBAM on the same backbone. `AttnPoolHead` puts timm's own `SEModule` or
`CbamModule` (`timm.layers.create_attn`) after the backbone's last stage, then pools globally on average and
classifies with a linear layer, so that a `GGAMModel(attention='se')` differs from the GGAM model only in the
attention of its head. It trains with cross-entropy alone: neither module has a channel distribution for the GGAM
loss to supervise.
"""
import torch
import torch.nn as nn
from timm.layers import create_attn

from ._trace import is_eager
from .attention import check_features

__all__ = ['AttnPoolHead', 'BASELINE_ATTENTIONS']

# timm's `create_attn` names of the comparators (Table 2 of the paper: SENet, CBAM)
BASELINE_ATTENTIONS = ('se', 'cbam')


class AttnPoolHead(nn.Module):
    """timm attention (SE or CBAM) on B x C x H x W features, global average pooling, dropout, linear classifier.

    `attn(x)` is the attended map D (what `global_pool=''` returns), `forward(x)` the logits.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            attention: str = 'se',
            rd_ratio: float = 1. / 16,
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            in_features: Channels C of the feature maps.
            num_classes: Classes K (0 for no classifier: `forward` then returns the pooled features).
            attention: 'se' (timm's `SEModule`) or 'cbam' (timm's `CbamModule`).
            rd_ratio: Reduction ratio of the attention's hidden layer (1/16, as SENet, CBAM and GGAM).
            drop_rate: Dropout before the classifier.
        """
        super().__init__()
        if attention not in BASELINE_ATTENTIONS:
            raise ValueError(f'attention must be one of {BASELINE_ATTENTIONS}, got {attention!r}')
        if num_classes < 0:
            raise ValueError(f'num_classes must be >= 0, got {num_classes}')
        if not 0 < rd_ratio <= 1:
            raise ValueError(f'rd_ratio must be in (0, 1], got {rd_ratio}')
        self.in_features = in_features
        self.num_classes = num_classes
        self.attention = attention
        self.rd_ratio = rd_ratio
        self.pool_type = 'avg'
        # timm 1.0.16's modules take no device / dtype: build, then move
        self.attn = create_attn(attention, in_features, rd_ratio=rd_ratio).to(device=device, dtype=dtype)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes, device=device, dtype=dtype) if num_classes > 0 else nn.Identity()

    def auto_pool_type(self) -> str:
        """'avg': SE and CBAM heads pool by global average, as in SENet and CBAM."""
        return self.pool_type

    def reset_classifier(self, num_classes: int, device=None, dtype=None) -> None:
        """Replace the classifier with a fresh one for `num_classes` classes (0 for none); device and dtype default
        to the attention's."""
        p = next(self.attn.parameters())
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes, device=device or p.device, dtype=dtype or p.dtype) \
            if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if is_eager():
                check_features(x, self.in_features)
        x = self.drop(self.attn(x).mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def extra_repr(self) -> str:
        return f'attention={self.attention!r}, rd_ratio={self.rd_ratio}, pool_type={self.pool_type!r}'

