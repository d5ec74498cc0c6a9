"""GGAM in your own training loop: wrap a timm backbone, add GGAMLoss, train.

    python examples/train_minimal.py                 # resnet18 from scratch on the built-in synthetic data set
    python examples/train_minimal.py --steps 5 --model test_resnet

The three GGAM lines are marked. `forward_ggam` returns the logits, the channel attention S and the Grad-CAM weights
beta (computed in closed form in the same forward pass, no hooks, no second backward); `GGAMLoss` is cross-entropy
plus lambda times the symmetric KL between S and the squashed beta. Everything else is an ordinary PyTorch loop.
"""
import argparse
import itertools

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ggam_layers import GGAMLoss, wrap_timm_model
from ggam_layers.data import create_dataset


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='resnet18', help='any timm backbone')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--lam', type=float, default=1.0, help='weight of the GGAM term')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: all cores)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    transform = T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN,
                                                                                IMAGENET_DEFAULT_STD)])
    dataset = create_dataset('synthetic', split='train', transform=transform, num_classes=10, samples_per_class=16)
    loader = DataLoader(dataset, batch_size=32, shuffle=True, drop_last=True)

    model = wrap_timm_model(args.model, num_classes=dataset.num_classes)  # GGAM 1: backbone + GGAM head
    criterion = GGAMLoss(lam=args.lam)                                      # GGAM 2: CE + lambda * L_GGAM
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)

    model.train()
    log = []
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for step, (images, labels) in zip(range(1, args.steps + 1), batches):
        terms = criterion.terms(model.forward_ggam(images), labels)         # GGAM 3: loss from forward_ggam
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()
        log.append((terms.loss.item(), terms.ce.item(), terms.ggam.item()))
        if step % 5 == 0 or step == 1 or step == args.steps:
            recent = log[-5:]
            loss, ce, ggam = (sum(v) / len(recent) for v in zip(*recent))
            print(f'step {step:3d}  loss {loss:.4f} = CE {ce:.4f} + {args.lam:g} x GGAM {ggam:.5f}  '
                  f'(mean of the last {len(recent)} steps)', flush=True)
    return log


if __name__ == '__main__':
    main()
