"""Class descriptions and the text side of the unsupervised adapters (methods §3.3, §4.3).

Static files ``classify/descriptions/<attribute>.json`` map every canonical class key
(``classify.schema``) to several short visual sentences about what a street-level photo of that
class shows, written for this project in the CuPL style (one visual property per sentence). No
language model runs at run time. To extend them, add sentences to the JSON lists (keep each one
visual, concrete and under 77 CLIP tokens; ``tests/test_adapt_text.py`` checks every file); to
regenerate them with a language model, ask for "10 sentences describing a street-level photo of
{class phrase}" per class and paste the answers in, as microCLIP did with GPT-4o.

``class_text(backbone, attribute)`` encodes everything once and returns ``ClassText``:

* ``handcrafted`` h_c (C, E): normalize(mean of the **unnormalised** template embeddings), the
  reference's way (pitfall MC-P15); templates are the schema prompt plus ``EXTRA_TEMPLATES``;
* ``descriptions`` e_{c,m} (C, M, E), each normalised, zero-padded to the largest M, ``mask`` (C, M);
* ``cupl`` normalize(mean_m e_{c,m}) (C, E): the initial learnable head (microCLIP W*);
* ``prior`` W_LLM[c] = normalize(Σ_m ω_{c,m} e_{c,m} / Σ_m ω_{c,m}), ω_{c,m} = e_{c,m}·h_c (§3.3).

A missing description file falls back to the handcrafted templates as descriptions (the
reference's ``use_handcrafted`` path), with a warning.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from contracts.errors import CityAuditError
from classify.backbone import Backbone
from classify.schema import Attribute

DESCRIPTION_DIR = Path(__file__).parent / "descriptions"
#: Our choice (methods §3.3): the schema prompt plus two generic street-view templates.
EXTRA_TEMPLATES = ("a street-view photo of {}.", "a photo showing {}.")
CONTEXT_LENGTH = 77  # CLIP's text context, start and end tokens included

log = logging.getLogger(__name__)


class DescriptionError(CityAuditError, ValueError):
    """A description file that does not fit the schema: wrong keys, an empty class, not a JSON object."""


@lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def token_count(text: str) -> int:
    """CLIP BPE tokens of ``text`` including the start and end tokens (must be ≤ 77 to fit)."""
    return len(_bpe().encode(text)) + 2


def description_path(attribute: Attribute, directory: str | Path | None = None) -> Path:
    """Where ``attribute``'s description file lives (``directory`` overrides the bundled folder)."""
    return Path(directory or DESCRIPTION_DIR) / f"{attribute.name}.json"


def validate_descriptions(attribute: Attribute, data: object, source: str = "<descriptions>") -> dict[str, list[str]]:
    """Check a parsed description mapping against the schema; returns it in class order.

    Raises ``DescriptionError`` for a non-object, missing or unknown class keys, or a class
    without any non-empty sentence. Sentences over 77 tokens are kept but logged: the
    tokenizer truncates them (pitfall MC-P16).
    """
    if not isinstance(data, dict):
        raise DescriptionError(f"{source}: expected a JSON object mapping class keys to sentence lists")
    missing = [c for c in attribute.classes if c not in data]
    unknown = [k for k in data if k not in attribute.classes]
    if missing or unknown:
        raise DescriptionError(f"{source}: keys must be the {attribute.name} classes {list(attribute.classes)}; "
                               f"missing {missing}, unknown {unknown}")
    out = {}
    for cls in attribute.classes:
        sentences = data[cls]
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise DescriptionError(f"{source}: {cls!r} must map to a list of strings")
        sentences = [s.strip() for s in sentences if s.strip()]
        if not sentences:
            raise DescriptionError(f"{source}: class {cls!r} has no description sentence")
        for sentence in sentences:
            if token_count(sentence) > CONTEXT_LENGTH:
                log.warning("%s: %r is longer than %d CLIP tokens and will be truncated", source, sentence,
                            CONTEXT_LENGTH)
        out[cls] = sentences
    return out


def handcrafted_prompts(attribute: Attribute) -> dict[str, list[str]]:
    """Per class: the schema prompt followed by ``EXTRA_TEMPLATES`` filled with the class phrase."""
    return {c: [attribute.template.format(attribute.phrases[c])] + [t.format(attribute.phrases[c])
                                                                     for t in EXTRA_TEMPLATES]
            for c in attribute.classes}


def load_descriptions(attribute: Attribute, directory: str | Path | None = None) -> dict[str, list[str]]:
    """The validated sentences of every class; the handcrafted prompts (with a warning) if no file exists."""
    path = description_path(attribute, directory)
    if not path.is_file():
        warnings.warn(f"no description file {path}; using the handcrafted templates as descriptions", stacklevel=2)
        return handcrafted_prompts(attribute)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DescriptionError(f"{path}: not valid JSON: {exc}") from None
    return validate_descriptions(attribute, data, str(path))


@dataclass
class ClassText:
    """Frozen text products of one attribute (all fp32, on the CPU); see the module docstring."""

    handcrafted: torch.Tensor  # (C, E)
    descriptions: torch.Tensor  # (C, M, E), normalised rows, zero rows where mask is False
    mask: torch.Tensor  # (C, M) bool
    cupl: torch.Tensor  # (C, E)
    prior: torch.Tensor  # (C, E)


def description_weights(descriptions: torch.Tensor, mask: torch.Tensor, handcrafted: torch.Tensor) -> torch.Tensor:
    """ω_{c,m} = e_{c,m}·h_c, zero at padded slots (C, M)."""
    omega = torch.einsum("cme,ce->cm", descriptions, handcrafted)
    return torch.where(mask, omega, torch.zeros_like(omega))


def prior_classifier(descriptions: torch.Tensor, mask: torch.Tensor, handcrafted: torch.Tensor) -> torch.Tensor:
    """The frozen prior W_LLM (C, E): normalize(Σ_m ω e / Σ_m ω), linear weights (not a softmax)."""
    omega = description_weights(descriptions, mask, handcrafted)
    total = omega.sum(dim=1, keepdim=True)
    # |Σω| guards the degenerate case of a negative total (random weights), which would flip the sign
    weighted = torch.einsum("cm,cme->ce", omega, descriptions) / total.abs().clamp_min(1e-12)
    return nn.functional.normalize(weighted, dim=-1)


def cupl_classifier(descriptions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """normalize(mean over the real descriptions of each class) (C, E)."""
    summed = (descriptions * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
    return nn.functional.normalize(summed, dim=-1)


@torch.inference_mode()
def _encode_raw(backbone: Backbone, texts: list[str]) -> torch.Tensor:
    """Unnormalised text embeddings (CPU, fp32), through the text-embedding disk cache (methods §1.4)."""
    from classify.text_cache import cached_encode

    def encode(strings: list[str]) -> torch.Tensor:
        tokens = backbone.tokenizer(strings).to(backbone.device)
        return backbone.model.encode_text(tokens).float().cpu()

    return cached_encode(backbone, texts, encode, kind="raw")


def class_text(backbone: Backbone, attribute: Attribute, directory: str | Path | None = None) -> ClassText:
    """Encode the templates and descriptions of ``attribute`` once (one text-tower call)."""
    templates = handcrafted_prompts(attribute)
    sentences = load_descriptions(attribute, directory)
    flat = [t for c in attribute.classes for t in templates[c]] + [s for c in attribute.classes for s in sentences[c]]
    raw = _encode_raw(backbone, flat)
    n_templates = len(EXTRA_TEMPLATES) + 1
    template_raw = raw[:len(attribute.classes) * n_templates].view(len(attribute.classes), n_templates, -1)
    handcrafted = nn.functional.normalize(template_raw.mean(dim=1), dim=-1)  # MC-P15 parity
    encoded = nn.functional.normalize(raw[len(attribute.classes) * n_templates:], dim=-1)
    width = max(len(sentences[c]) for c in attribute.classes)
    descriptions = torch.zeros(len(attribute.classes), width, raw.shape[-1])
    mask = torch.zeros(len(attribute.classes), width, dtype=torch.bool)
    start = 0
    for i, cls in enumerate(attribute.classes):
        n = len(sentences[cls])
        descriptions[i, :n], mask[i, :n] = encoded[start:start + n], True
        start += n
    return ClassText(handcrafted, descriptions, mask, cupl_classifier(descriptions, mask),
                     prior_classifier(descriptions, mask, handcrafted))
