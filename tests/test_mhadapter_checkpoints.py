"""Checkpoints: round trip, refusal of other backbones / class lists / corrupt files, no unpickling."""

from __future__ import annotations

import hashlib
import json
import pickle

import open_clip
import pytest
import torch

from classify.backbone import BACKBONES, Backbone, ImageFeatures
from classify.checkpoints import CheckpointError, load_head, load_head_bundle, save_head, serving_heads
from classify.mhadapter import AdapterConfig, build_mhadapter_head
from classify.schema import ATTRIBUTES


@pytest.fixture()
def saved(tmp_path, tiny_backbone):
    torch.manual_seed(3)
    head = build_mhadapter_head(tiny_backbone, ATTRIBUTES["reflection"], AdapterConfig(heads=4, blend=0.8)).eval()
    sidecar = save_head(head, tmp_path, tiny_backbone, hyperparameters={"lr": 5e-4}, metrics={"val": {"macro_f1": 0.5}})
    return head, sidecar


def _features(backbone, n=3):
    torch.manual_seed(4)
    return ImageFeatures(torch.randn(n, backbone.embed_dim), torch.randn(n, 196, backbone.width))


def test_round_trip_gives_the_same_logits_and_a_complete_sidecar(saved, tiny_backbone):
    head, sidecar_path = saved
    loaded = load_head(sidecar_path, tiny_backbone)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_features(tiny_backbone)), head(_features(tiny_backbone)), rtol=0, atol=0)
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["backbone"]["name"] == "tiny"
    assert sidecar["backbone"]["weights_sha256"] == tiny_backbone.weights_sha256
    assert sidecar["classes"] == ["no_reflection", "reflection"]
    assert sidecar["prompts"] == ["a photo with no reflection.", "a photo with reflection."]
    assert sidecar["adapter"]["blend"] == 0.8 and sidecar["hyperparameters"] == {"lr": 5e-4}
    assert sidecar["metrics"]["val"]["macro_f1"] == 0.5
    assert loaded.head_id == head.head_id == sidecar["head_id"]


def test_another_backbone_is_refused(saved):
    _, sidecar_path = saved
    spec = BACKBONES["tiny"]
    torch.manual_seed(1)  # same architecture, other weights
    model, _, preprocess = open_clip.create_model_and_transforms(spec.open_clip_name, pretrained=None)
    other = Backbone(spec, model, preprocess, torch.device("cpu"), trained=False, weights_source="seed 1")
    with pytest.raises(CheckpointError, match="made for backbone 'tiny'.*retrain"):
        load_head(sidecar_path, other)


def test_another_class_list_or_prompt_is_refused(saved, tiny_backbone):
    _, sidecar_path = saved
    sidecar = json.loads(sidecar_path.read_text())
    sidecar_path.write_text(json.dumps({**sidecar, "classes": ["reflection", "no_reflection"]}))
    with pytest.raises(CheckpointError, match="class list"):
        load_head(sidecar_path, tiny_backbone)
    sidecar_path.write_text(json.dumps({**sidecar, "prompts": ["a", "b"]}))
    with pytest.raises(CheckpointError, match="prompts"):
        load_head(sidecar_path, tiny_backbone)


def test_corrupt_and_foreign_files_are_refused(saved, tiny_backbone, tmp_path):
    _, sidecar_path = saved
    tensors = sidecar_path.with_suffix(".safetensors")
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_head(sidecar_path, tiny_backbone)
    sidecar_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_head(sidecar_path, tiny_backbone)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_head(tmp_path / "missing.json", tiny_backbone)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_is_never_unpickled(saved, tiny_backbone, tmp_path):
    _, sidecar_path = saved
    marker = tmp_path / "unpickled"
    tensors = sidecar_path.with_suffix(".safetensors")
    tensors.write_bytes(pickle.dumps({"text_embeddings": _Exploit(marker)}))
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["tensors_sha256"] = hashlib.sha256(tensors.read_bytes()).hexdigest()  # even with a "valid" sidecar
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_head(sidecar_path, tiny_backbone)
    assert not marker.exists()


def test_bundle_serves_trained_heads_and_zero_shot_for_the_rest(saved, tiny_backbone, tmp_path):
    head, sidecar_path = saved
    heads = serving_heads(tiny_backbone, sidecar_path.parent)
    assert list(heads) == list(ATTRIBUTES)
    assert {name: h.method for name, h in heads.items() if h.method != "zeroshot"} == {"reflection": "mhadapter"}
    assert heads["reflection"].head_id == head.head_id
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no head checkpoints"):
        load_head_bundle(tmp_path / "empty", tiny_backbone)
    with pytest.raises(CheckpointError, match="does not exist"):
        serving_heads(tiny_backbone, tmp_path / "nowhere")
