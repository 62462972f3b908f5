"""Eight MHAdapter heads in one batched pass give the same logits as the heads one by one (1e-5, fp32)."""

import dataclasses

import pytest
import torch

from classify.backbone import ImageFeatures
from classify.fused import FusedMHAdapterHeads, HeadRunner
from classify.heads import ZeroShotHead
from classify.mhadapter import MHAdapterHead
from classify.schema import ATTRIBUTES
from classify.train import REFERENCE_ADAPTERS


def _random_heads(width: int, embed_dim: int, logit_scale: float, seed: int = 0) -> dict[str, MHAdapterHead]:
    """8 heads with the reference configs (4/8/16 attention heads, r 0.2/0.8), every tensor random:
    LayerNorm scale and shift included, so folding them into the projections is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    heads = {}
    for index, (name, attribute) in enumerate(ATTRIBUTES.items()):
        config = REFERENCE_ADAPTERS[name]
        if index == 3:  # one head with the flagged MHA-P5 variant
            config = dataclasses.replace(config, normalize_before_blend=True)
        text = torch.randn(len(attribute.classes), embed_dim, generator=generator)
        head = MHAdapterHead(attribute, text, logit_scale, width, config)
        with torch.no_grad():
            for parameter in head.adapter.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5)
            head.adapter.norm.weight.add_(1.0)
        heads[name] = head.eval()
    return heads


def _features(batch: int, n: int, width: int, embed_dim: int, seed: int = 1) -> ImageFeatures:
    generator = torch.Generator().manual_seed(seed)
    return ImageFeatures(torch.randn(batch, embed_dim, generator=generator),
                         torch.randn(batch, n, width, generator=generator))


@pytest.mark.parametrize("width, embed_dim, logit_scale, batch", [
    (128, 64, 14.3, 5),     # the tiny backbone's widths
    (768, 512, 100.0, 2),   # ViT-B/16 (W=768, E=512, N=196) with CLIP's trained logit scale
])
def test_fused_heads_equal_sequential_heads(width, embed_dim, logit_scale, batch):
    heads = _random_heads(width, embed_dim, logit_scale)
    features = _features(batch, 196, width, embed_dim)
    fused = FusedMHAdapterHeads(heads)
    assert [count for count, _ in fused.groups] == [4, 8, 16]  # one attention call per head count
    with torch.inference_mode():
        got = fused(features)
        for name, head in heads.items():
            expected = head(features)
            assert got[name].shape == expected.shape == (batch, len(head.attribute.classes))
            torch.testing.assert_close(got[name], expected, rtol=0, atol=1e-5)
            assert expected.std() > 0.1  # not trivially equal: logits really differ across classes/images


def test_fused_heads_are_per_image():
    heads = _random_heads(128, 64, 14.3)
    features = _features(3, 196, 128, 64)
    fused = FusedMHAdapterHeads(heads)
    with torch.inference_mode():
        before = fused(features)
        features.patch_tokens[1] += 1.0
        after = fused(features)
    for name in heads:
        assert torch.equal(before[name][0], after[name][0]) and torch.equal(before[name][2], after[name][2])
        assert not torch.allclose(before[name][1], after[name][1])


def test_runner_fuses_mhadapter_heads_and_runs_the_rest_as_they_are():
    heads = _random_heads(128, 64, 14.3)
    names = list(heads)
    heads[names[0]] = ZeroShotHead(ATTRIBUTES[names[0]], torch.randn(len(ATTRIBUTES[names[0]].classes), 64), 14.3)
    heads[names[1]].train()  # a head in training mode keeps its own (dropout) forward
    runner = HeadRunner(heads)
    assert runner.fused_names == names[2:]
    features = _features(2, 196, 128, 64)
    logits = runner(features)
    assert list(logits) == names  # same order as given
    with torch.inference_mode():
        for name, head in heads.items():
            if name == names[1]:
                continue  # ran with dropout active, as a training-mode head should
            torch.testing.assert_close(logits[name], head(features), rtol=0, atol=1e-5)


def test_a_single_head_is_not_fused():
    heads = dict(list(_random_heads(128, 64, 14.3).items())[:1])
    assert HeadRunner(heads).fused is None and HeadRunner(_random_heads(128, 64, 14.3), fuse=False).fused is None


def test_predict_attributes_serves_fused_heads(tiny_backbone, tmp_path):
    """The serving path gives the probabilities of the heads run one by one."""
    import pandas as pd
    from PIL import Image

    from classify.predict import predict_attributes

    files = []
    for i in range(3):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (64, 48), (40 * i, 90, 200 - 50 * i)).save(path)
        files.append(str(path))
    heads = _random_heads(tiny_backbone.width, tiny_backbone.embed_dim, tiny_backbone.logit_scale)
    images = pd.DataFrame({"image_id": ["a", "b", "c"], "file": files})
    table = predict_attributes(images, tiny_backbone, heads, num_workers=0, progress=False).predictions.to_pandas()
    pixels = torch.stack([tiny_backbone.preprocess(Image.open(f).convert("RGB")) for f in files])
    features = tiny_backbone.encode_images(pixels)
    with torch.inference_mode():
        for name, head in heads.items():
            expected = head(features).softmax(dim=-1).max(dim=-1).values
            got = table[table.attribute == name].sort_values("image_id")["confidence"].to_numpy()
            torch.testing.assert_close(torch.tensor(got), expected, rtol=0, atol=1e-5)
