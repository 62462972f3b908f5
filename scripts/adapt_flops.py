"""Count the FLOPs of one self-training step and of one prediction, per image, for ViT-B/16.

    PYTHONPATH=. python scripts/adapt_flops.py [--attribute platform]

Builds ViT-B/16 (QuickGELU) with random weights on the CPU (FLOPs do not depend on the weights),
then counts matmul/convolution FLOPs with ``torch.utils.flop_counter`` for a plain backbone pass,
one microCLIP and one FAIR-style training step (weak view + 8 crops + strong view + backward), and
one adapted prediction. NCut's eigendecomposition is not counted. The numbers in
``docs/adaptation.md`` come from this script.
"""

from __future__ import annotations

import argparse

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from classify.adapt import METHODS
from classify.backbone import BACKBONES, Backbone
from classify.microclip import RunningMean
from classify.schema import get_attribute


def count(fn) -> float:
    """FLOPs of calling ``fn()``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> None:
    """Print GFLOP per image for the plain pass, each method's training step and its prediction."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attribute", default="platform")
    parser.add_argument("--crops", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained=None)
    backbone = Backbone(BACKBONES["vit-b16"], model, preprocess, torch.device("cpu"), trained=False,
                        weights_source="random (FLOP counting only)")
    b = 2
    weak, strong = torch.randn(b, 3, 224, 224), torch.randn(b, 3, 224, 224)
    crops = torch.randn(b, args.crops, 3, 224, 224)
    plain = count(lambda: backbone.encode_images(weak[:1]))
    print(f"plain backbone pass: {plain / 1e9:.1f} GFLOP/image")
    for name, method in METHODS.items():
        head = method.build(backbone, get_attribute(args.attribute), method.config())

        def step():
            loss, _ = method.loss(head, weak, strong, crops, RunningMean())
            loss.backward()

        train = count(step) / b
        with torch.no_grad():
            predict = count(lambda: head.logits(weak[:1]))
        print(f"{method.display_name}: training {train / 1e9:.0f} GFLOP/image/epoch ({train / plain:.1f}x a pass), "
              f"prediction {predict / 1e9:.1f} GFLOP/image; {sum(p.numel() for p in head.trainable_parameters()):,} "
              f"trainable parameters")


if __name__ == "__main__":
    main()
