"""Zero-shot heads and batched inference over real sample images."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from classify.heads import zero_shot_heads
from classify.predict import predict_attributes
from contracts.tables import PREDICTIONS
from classify.schema import ATTRIBUTES
from geo.imagery import SAMPLE_AREA


def _sample_images(n: int | None = None) -> pd.DataFrame:
    meta = pd.read_parquet(SAMPLE_AREA / "images.parquet").head(n)
    return pd.DataFrame({"image_id": meta["image_id"], "file": [str(SAMPLE_AREA / p) for p in meta["path"]]})


def test_all_prompts_go_through_the_text_tower_once(tiny_backbone, monkeypatch):
    calls = []
    original = tiny_backbone.model.encode_text
    monkeypatch.setattr(tiny_backbone.model, "encode_text", lambda t, **kw: calls.append(len(t)) or original(t, **kw))
    heads = zero_shot_heads(tiny_backbone)
    assert calls == [sum(len(a.classes) for a in ATTRIBUTES.values())]  # 25 prompts, one call
    # inference never touches the text tower again
    monkeypatch.setattr(tiny_backbone.model, "encode_text", lambda *a, **k: pytest.fail("text tower called at inference"))
    predict_attributes(_sample_images(2), tiny_backbone, heads, progress=False)


def test_zero_shot_logits_are_scaled_cosine_similarities(tiny_backbone):
    heads = zero_shot_heads(tiny_backbone)
    features = tiny_backbone.encode_images(torch.randn(2, 3, 224, 224))
    head = heads["weather"]
    image = torch.nn.functional.normalize(features.pooled, dim=-1)
    text = tiny_backbone.encode_text(ATTRIBUTES["weather"].prompts())
    torch.testing.assert_close(head(features), tiny_backbone.logit_scale * image @ text.T)


def test_predictions_cover_every_image_and_attribute(tiny_backbone):
    heads = zero_shot_heads(tiny_backbone)
    result = predict_attributes(_sample_images(), tiny_backbone, heads, batch_size=8, progress=False)
    table = result.predictions.to_pandas()
    assert result.predictions.schema == PREDICTIONS
    assert len(table) == 19 * 8 and result.failures.empty
    assert table.groupby("image_id").attribute.nunique().eq(8).all()
    for row in table.itertuples():
        probabilities = dict(row.probabilities)
        assert list(probabilities) == list(ATTRIBUTES[row.attribute].classes)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert row.label == max(probabilities, key=probabilities.get)
        assert row.confidence == pytest.approx(probabilities[row.label])
    assert set(table.method) == {"zeroshot"}
    assert table.model_id.str.startswith(tiny_backbone.model_id + "+zeroshot:").all()


def test_batch_size_does_not_change_predictions(tiny_backbone):
    heads = zero_shot_heads(tiny_backbone)
    images = _sample_images(5)
    keys = ["image_id", "attribute"]
    one = predict_attributes(images, tiny_backbone, heads, batch_size=1, progress=False).predictions.to_pandas()
    five = predict_attributes(images, tiny_backbone, heads, batch_size=5, progress=False).predictions.to_pandas()
    one, five = one.sort_values(keys, ignore_index=True), five.sort_values(keys, ignore_index=True)
    assert one.label.tolist() == five.label.tolist()
    assert one.confidence.to_numpy() == pytest.approx(five.confidence.to_numpy(), abs=1e-4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_image_is_recorded_and_the_rest_classified(tiny_backbone, tmp_path, num_workers):
    images = _sample_images(3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(images.file[0]).read_bytes()[:2000])  # truncated JPEG
    images.loc[len(images)] = ["broken-1", str(broken)]
    images.loc[len(images)] = ["missing-1", str(tmp_path / "missing.jpg")]
    result = predict_attributes(images, tiny_backbone, zero_shot_heads(tiny_backbone), batch_size=2,
                                num_workers=num_workers, progress=False)
    assert sorted(result.failures.image_id) == ["broken-1", "missing-1"]
    assert result.failures.stage.eq("classify").all() and result.failures.reason.str.len().gt(0).all()
    assert set(result.predictions.column("image_id").to_pylist()) == set(images.image_id[:3])
