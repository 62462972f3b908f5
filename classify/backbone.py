"""Frozen open_clip backbones: a small registry, one loader, one image pass for every head.

``load_backbone("vit-b16")`` is the paper's ViT-B/16 with OpenAI weights (open_clip's
QuickGELU variant), downloaded to the Hugging Face cache on first use; ``weights=PATH`` (or the
``CITY_AUDIT_WEIGHTS`` environment variable) loads a local file instead. ``load_backbone("tiny")``
is a 3-block ViT defined in ``model_configs/`` with seeded random weights, for tests and
offline demos: anything it predicts is noise and is marked untrained.

``Backbone.encode_images`` runs the image tower once and returns both the pooled CLIP
embedding and the penultimate-block patch tokens, which is all any head needs.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from classify.registry import BACKBONES, WEIGHTS_ENV, BackboneSpec  # noqa: F401 - BackboneSpec: part of this API
from contracts.errors import CityAuditError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_SEED = 0

open_clip.add_model_config(MODEL_CONFIG_DIR)


class BackboneError(CityAuditError, RuntimeError):
    """The backbone could not be built: unknown name, unreachable or unusable weights."""


@dataclass
class ImageFeatures:
    """What one backbone pass yields for a batch of B images.

    ``pooled``: CLIP image embedding ``ln_post(CLS) @ proj``, unnormalised, (B, E).
    ``patch_tokens``: residual stream after block L-2 without the CLS token, (B, N, W).
    ``pixels``: the preprocessed batch itself (B, 3, S, S), attached only when a head runs its own
    adapted image tower (``needs_pixels``: microCLIP, FAIR-style); None otherwise.
    """

    pooled: torch.Tensor
    patch_tokens: torch.Tensor
    pixels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "ImageFeatures":
        pixels = None if self.pixels is None else self.pixels.to(device)
        return ImageFeatures(self.pooled.to(device), self.patch_tokens.to(device), pixels)


def default_device() -> torch.device:
    """CUDA when available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def state_dict_sha256(module: torch.nn.Module) -> str:
    """Content hash of a module's tensors (names, dtypes, shapes and bytes), independent of files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class Backbone:
    """A frozen CLIP model in eval mode plus its preprocessing, tokenizer and identity."""

    def __init__(self, spec: BackboneSpec, model: open_clip.CLIP, preprocess, device: torch.device,
                 trained: bool, weights_source: str):
        self.spec = spec
        self.model = model.eval().requires_grad_(False).to(device)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
        self.device = device
        self.trained = trained
        self.weights_source = weights_source
        self.weights_sha256 = state_dict_sha256(self.model)
        visual = self.model.visual
        self.width: int = visual.transformer.width
        self.embed_dim: int = visual.output_dim
        self.n_blocks: int = len(visual.transformer.resblocks)
        self.logit_scale: float = float(self.model.logit_scale.exp())

    @property
    def model_id(self) -> str:
        """Short content id, e.g. ``vit-b16:3f2a9c01d4e5``: the same weights give the same id."""
        return f"{self.spec.name}:{self.weights_sha256[:12]}"

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    def autocast(self):
        """bf16 autocast on CUDA, a no-op elsewhere (CPU inference stays fp32)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> ImageFeatures:
        """One image-tower pass over preprocessed pixels (B, 3, H, W) -> pooled + patch tokens (fp32)."""
        pixels = pixels.to(self.device, non_blocking=True)
        with self.autocast():
            out = self.model.visual.forward_intermediates(
                pixels, indices=[self.n_blocks - 2], output_fmt="NLC"
            )
        return ImageFeatures(out["image_features"].float(), out["image_intermediates"][0].float())

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), E) in fp32, computed in one call."""
        tokens = self.tokenizer(texts).to(self.device)
        with self.autocast():
            emb = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(emb.float(), dim=-1)


def load_backbone(model: str = "vit-b16", weights: str | os.PathLike | None = None,
                  device: str | torch.device | None = None) -> Backbone:
    """Build a frozen backbone by registry name.

    ``weights``: a local checkpoint file (open_clip/OpenAI state dict or safetensors); default
    ``$CITY_AUDIT_WEIGHTS``, else the spec's pretrained tag (downloaded on first use), else
    seeded random weights (``tiny``). Raises ``BackboneError`` with what to do on failure.
    """
    try:
        spec = BACKBONES[model]
    except KeyError:
        raise BackboneError(f"unknown model {model!r}; choose from {', '.join(BACKBONES)}") from None
    device = torch.device(device) if device is not None else default_device()
    weights = weights or os.environ.get(WEIGHTS_ENV) or None

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file {str(path)!r} does not exist; pass the path of a local "
                                f"{spec.open_clip_name} checkpoint with --weights")
        pretrained, trained, source = str(path), True, str(path)
    elif spec.pretrained is not None:
        pretrained, trained, source = spec.pretrained, True, f"open_clip:{spec.open_clip_name}/{spec.pretrained}"
    else:
        pretrained, trained, source = None, False, f"random(seed={TINY_SEED})"

    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*QuickGELU.*")
            torch.manual_seed(TINY_SEED)
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                spec.open_clip_name, pretrained=pretrained, device="cpu", weights_only=True
            )
    except Exception as exc:  # noqa: BLE001 - turned into an actionable message
        if weights is not None:
            raise BackboneError(
                f"could not load weights {str(weights)!r} into {spec.open_clip_name}: {exc}. "
                f"Check that the file is a {spec.open_clip_name} checkpoint (state dict or safetensors)."
            ) from exc
        raise BackboneError(
            f"could not obtain {spec.open_clip_name} '{spec.pretrained}' weights ({type(exc).__name__}: {exc}). "
            f"They download from the Hugging Face hub on first use; without internet, pass a local file "
            f"with --weights PATH (or set {WEIGHTS_ENV}), or use --model tiny for an untrained offline demo."
        ) from exc
    return Backbone(spec, clip_model, preprocess, device, trained=trained, weights_source=source)
