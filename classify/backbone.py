"""Frozen open_clip backbones: one loader for any open_clip model, one image pass for every head.

The curated registry lives in ``classify.registry`` (``city-audit models``); ``--model``
also takes any open_clip ``ARCH/PRETRAINED`` pair. Towers that are not open_clip ViTs (ResNet,
timm) load too, but give no patch tokens: only zero-shot heads run on them
(``require_patch_tokens`` refuses the others with one line).

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

from classify.registry import BACKBONES, MODEL_CONFIG_DIR, WEIGHTS_ENV, BackboneSpec, ModelNameError, resolve_spec
from contracts.errors import CityAuditError

#: set to the sha256 of a --weights file to vouch that it holds the real weights of the named model
VERIFIED_ENV = "CITY_AUDIT_WEIGHTS_VERIFIED"
TINY_SEED = 0

open_clip.add_model_config(MODEL_CONFIG_DIR)

__all__ = ["BACKBONES", "Backbone", "BackboneError", "BackboneSpec", "ImageFeatures", "load_backbone",
           "random_backbone", "require_patch_tokens"]

#: heads that read the image tower's patch tokens (or adapt its blocks): refused on other towers
PATCH_TOKEN_METHODS = ("mhadapter", "microclip", "fair")


class BackboneError(CityAuditError, RuntimeError):
    """The backbone could not be built: unknown name, unreachable or unusable weights."""


class NoPatchTokensError(BackboneError):
    """A head that needs patch tokens was asked for on a tower that has none (ResNet, timm towers)."""


@dataclass
class ImageFeatures:
    """What one backbone pass yields for a batch of B images.

    ``pooled``: CLIP image embedding ``ln_post(CLS) @ proj``, unnormalised, (B, E).
    ``patch_tokens``: residual stream after block L-2 without the CLS token, (B, N, W); None on
    towers without patch tokens (``Backbone.has_patch_tokens`` False: zero-shot heads only).
    ``pixels``: the preprocessed batch itself (B, 3, S, S), attached only when a head runs its own
    adapted image tower (``needs_pixels``: microCLIP, FAIR-style); None otherwise.
    """

    pooled: torch.Tensor
    patch_tokens: torch.Tensor | None
    pixels: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "ImageFeatures":
        pixels = None if self.pixels is None else self.pixels.to(device)
        tokens = None if self.patch_tokens is None else self.patch_tokens.to(device)
        return ImageFeatures(self.pooled.to(device), tokens, pixels)


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
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.is_meta:  # shape-only models (tests, cost estimates): no bytes to hash
            continue
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
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
        #: sha256 of a local ``--weights`` file, None otherwise; such a file is unverified (nobody checked
        #: that it holds the named model's real weights) unless the user vouches via $CITY_AUDIT_WEIGHTS_VERIFIED
        self.weights_file_sha256: str | None = None
        self.weights_verified: bool = weights_source.startswith("open_clip:")
        visual = self.model.visual
        #: open_clip ViTs give penultimate-block patch tokens; ResNet and timm towers give only the pooled embedding
        self.has_patch_tokens: bool = isinstance(visual, open_clip.transformer.VisionTransformer)
        self.width: int | None = visual.transformer.width if self.has_patch_tokens else None
        self.embed_dim: int = int(getattr(visual, "output_dim", None) or self.model.text_projection.shape[-1])
        self.n_blocks: int | None = len(visual.transformer.resblocks) if self.has_patch_tokens else None
        scale = self.model.logit_scale
        # a meta-device model (shapes only) has no value: CLIP's initial 1/0.07 stands in
        self.logit_scale: float = 1 / 0.07 if scale.is_meta else float(scale.exp())

    @property
    def model_id(self) -> str:
        """Short content id, e.g. ``vit-b16:3f2a9c01d4e5``: the same weights give the same id."""
        return f"{self.spec.name}:{self.weights_sha256[:12]}"

    @property
    def image_size(self) -> int:
        """Side of the square input the tower expects (pixels)."""
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    def autocast(self):
        """bf16 autocast on CUDA, a no-op elsewhere (CPU inference stays fp32)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> ImageFeatures:
        """One image-tower pass over preprocessed pixels (B, 3, H, W) -> pooled + patch tokens (fp32)."""
        pixels = pixels.to(self.device, non_blocking=True)
        if not self.has_patch_tokens:
            with self.autocast():
                return ImageFeatures(self.model.encode_image(pixels).float(), None)
        with self.autocast():
            out = self.model.visual.forward_intermediates(
                pixels, indices=[self.n_blocks - 2], output_fmt="NLC"
            )
        return ImageFeatures(out["image_features"].float(), out["image_intermediates"][0].float())

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), E) in fp32, computed in one call, or read from
        the text-embedding disk cache (``classify.text_cache``, keyed by weights hash and strings)."""
        from classify.text_cache import cached_encode

        return cached_encode(self, list(texts), self._encode_text)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        with self.autocast():
            emb = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(emb.float(), dim=-1)


def load_backbone(model: str = "vit-b16", weights: str | os.PathLike | None = None,
                  device: str | torch.device | None = None) -> Backbone:
    """Build a frozen backbone by registry name (``city-audit models``) or open_clip ``ARCH/PRETRAINED``.

    ``weights``: a local checkpoint file (open_clip/OpenAI state dict or safetensors); default
    ``$CITY_AUDIT_WEIGHTS``, else the spec's pretrained tag (downloaded on first use), else
    seeded random weights (``tiny``). Raises ``BackboneError`` with what to do on failure.
    """
    weights = weights or os.environ.get(WEIGHTS_ENV) or None
    try:
        spec = resolve_spec(model, weights=None if weights is None else str(weights))
    except ModelNameError as exc:
        raise BackboneError(str(exc)) from None
    device = torch.device(device) if device is not None else default_device()

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"weights file {str(path)!r} does not exist; pass the path of a local "
                                f"{spec.open_clip_name} checkpoint with --weights")
        pretrained, trained, source = str(path), True, str(path)
        with path.open("rb") as handle:
            file_sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
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
    backbone = Backbone(spec, clip_model, preprocess, device, trained=trained, weights_source=source)
    if weights is not None:
        backbone.weights_file_sha256 = file_sha256
        backbone.weights_verified = os.environ.get(VERIFIED_ENV, "") == file_sha256
    return backbone


def random_backbone(model: str | BackboneSpec, device: str | torch.device = "cpu", seed: int = 0) -> Backbone:
    """The architecture of ``model`` with seeded random weights, no download: for timing, shape
    checks and tests. ``device="meta"`` builds it without allocating memory (shapes only)."""
    spec = model if isinstance(model, BackboneSpec) else resolve_spec(model, weights="random")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*QuickGELU.*")
        torch.manual_seed(seed)
        if device.type == "meta":
            with torch.device("meta"):
                model_, _, preprocess = open_clip.create_model_and_transforms(spec.open_clip_name, pretrained=None,
                                                                              device="meta")
        else:
            model_, _, preprocess = open_clip.create_model_and_transforms(spec.open_clip_name, pretrained=None)
    return Backbone(spec, model_, preprocess, device, trained=False, weights_source=f"random(seed={seed})")


def require_patch_tokens(backbone: Backbone, method: str) -> None:
    """Raise ``NoPatchTokensError`` (one line) if ``method``'s heads cannot run on ``backbone``."""
    if backbone.has_patch_tokens or method not in PATCH_TOKEN_METHODS:
        return
    raise NoPatchTokensError(
        f"backbone {backbone.spec.name} ({type(backbone.model.visual).__name__} image tower) gives no patch tokens, "
        f"so {method} heads cannot run on it ({', '.join(PATCH_TOKEN_METHODS)} all need a CLIP ViT); "
        f"zero-shot heads still work: run without --heads/--adapt, or pick a ViT backbone (city-audit models)")
