"""The paper's CUB-200-2011 recipe through the Python API: GGAM on an ImageNet ResNet-50, 448 x 448 input, SGD
(momentum 0.9, weight decay 5e-4), lr 0.1 for the GGAM head and 0.01 for the backbone, cosine schedule, 100 epochs,
batch 16, mixed precision (the paper reports 88.45% top-1; Table 2).

    python examples/train_cub_paper.py /data/CUB_200_2011 --output runs/cub-ggam
    python examples/train_cub_paper.py /data/CUB_200_2011 --output runs/cub-plain --plain    # the baseline
    torchrun --nproc-per-node 4 examples/train_cub_paper.py /data/CUB_200_2011     # DDP, the same global batch

Needs a local copy of CUB-200-2011 (images/, images.txt, image_class_labels.txt, train_test_split.txt, classes.txt)
and, the first time, network access for the backbone's ImageNet weights (or --pretrained-file PATH).
The same run on the command line: `ggam-layers train --preset paper --data-root /data/CUB_200_2011`.
"""
import argparse
import sys
from pathlib import Path

from ggam_layers.train import TrainConfig, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('root', help='CUB-200-2011 folder (holding images/ and images.txt)')
    parser.add_argument('--output', default='runs/cub-ggam-resnet50', help='run directory')
    parser.add_argument('--plain', action='store_true', help='train the plain ResNet-50 baseline instead')
    parser.add_argument('--lam', type=float, default=None, help='weight of the GGAM loss (default: the preset)')
    parser.add_argument('--pretrained-file', default=None, help='local ImageNet weights for the backbone')
    parser.add_argument('--resume', action='store_true', help='continue the run in --output')
    parser.add_argument('--workers', type=int, default=8)
    args = parser.parse_args(argv)

    root = Path(args.root)
    if not (root / 'images.txt').is_file() and not (root / 'CUB_200_2011' / 'images.txt').is_file():
        from ggam_layers.data import DATASET_LAYOUTS
        print(f'CUB-200-2011 not found at {root}: this example needs a local copy of the data set '
              f'(https://www.vision.caltech.edu/datasets/cub_200_2011/).\n{DATASET_LAYOUTS["cub"]}', file=sys.stderr)
        return 2

    overrides = dict(data_root=str(root), output=args.output, plain=args.plain, resume=args.resume,
                     workers=args.workers)
    if args.lam is not None:
        overrides['lam'] = args.lam
    if args.pretrained_file:
        overrides['pretrained_file'] = args.pretrained_file
    cfg = TrainConfig.from_preset('paper', **overrides)
    result = train(cfg)
    print(f"{result['label']} on CUB-200-2011: top-1 {100 * result['test_top1']:.2f}% "
          f"(paper, GGAM + ResNet-50: 88.45%; plain ResNet-50: 85.10%), run: {result['output']}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
