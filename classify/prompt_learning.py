"""CoOp (methods §2.8): 8 learnable context vectors in front of each class name, through the frozen text tower.

The prompt of class c is ``[SOS] v_1 … v_8 <class phrase> . [EOS]``: the token embeddings of the
8 placeholder positions are replaced by shared learnable vectors (the unified-context, class-token-
at-the-end variant, N_CTX = 8 as in the reference comparison), the sequence goes through the
backbone's own frozen text transformer, ``ln_final`` and projection, and the EOS position is
pooled. Gradients flow through the text tower into the context only, so CoOp needs the text
encoder itself, not cached text embeddings; the image side uses the cached pooled embeddings.
After training the C prompt embeddings are fixed, and the served head is a cosine classifier over
them, exactly like zero-shot with learned prompts.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from classify.backbone import Backbone, BackboneError, ImageFeatures
from classify.baselines import BaselineConfig, fit_baseline
from classify.schema import Attribute

N_CTX = 8
#: placeholder word whose token positions the context vectors replace (one BPE token in CLIP's vocabulary)
PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """Learnable context (N_CTX, width) and the text tower pass that turns it into C prompt embeddings."""

    def __init__(self, backbone: Backbone, attribute: Attribute, n_ctx: int = N_CTX, seed: int = 42):
        super().__init__()
        model = backbone.model
        if not all(hasattr(model, name) for name in ("token_embedding", "positional_embedding", "transformer",
                                                     "ln_final")):
            raise BackboneError(f"CoOp needs an open_clip CLIP text tower (token embedding + transformer); "
                                f"{backbone.spec.name} has another text encoder")
        object.__setattr__(self, "model", model)  # not a submodule: state_dict holds only the context
        self.n_ctx = n_ctx
        prompts = [" ".join([PLACEHOLDER] * n_ctx) + f" {attribute.phrases[c]}." for c in attribute.classes]
        tokens = backbone.tokenizer(prompts).to(backbone.device)
        placeholder = tokens[:, 1:1 + n_ctx]
        if not bool((placeholder == placeholder[0, 0]).all()) or bool((tokens[:, 1 + n_ctx] == placeholder[0, 0]).any()):
            raise BackboneError(f"CoOp: the tokenizer of {backbone.spec.name} does not give one token per placeholder "
                                f"word, so the {n_ctx} context positions cannot be located")
        self.register_buffer("tokens", tokens, persistent=False)
        width = model.token_embedding.weight.shape[1]
        generator = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter((torch.randn(n_ctx, width, generator=generator) * 0.02).to(backbone.device))

    def forward(self) -> torch.Tensor:
        """L2-normalised prompt embeddings (C, E) in fp32; differentiable in ``ctx``."""
        model = self.model
        x = model.token_embedding(self.tokens).float()
        ctx = self.ctx.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx:]], dim=1)
        x = x + model.positional_embedding.float()
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        pool = getattr(model, "text_pool_type", "argmax")
        if pool == "argmax":
            x = x[torch.arange(x.shape[0], device=x.device), self.tokens.argmax(dim=-1)]
        elif pool == "eos":
            x = x[torch.arange(x.shape[0], device=x.device), (self.tokens == model.text_eos_id).int().argmax(dim=-1)]
        elif pool == "last":
            x = x[:, -1]
        else:
            x = x[:, 0]
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, nn.Linear) else x @ projection.float()
        return nn.functional.normalize(x.float(), dim=-1)


class CoOpHead(nn.Module):
    """The served CoOp head: ``logit_scale · cos(pooled image embedding, learned prompt embedding)``."""

    method = "coop"

    def __init__(self, attribute: Attribute, text_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        self.attribute, self.logit_scale = attribute, logit_scale
        self.register_buffer("text_embeddings", text_embeddings.detach().float())
        self.head_id = "coop:" + hashlib.sha256(self.text_embeddings.cpu().numpy().tobytes()).hexdigest()[:12]

    def forward(self, features: ImageFeatures) -> torch.Tensor:
        """Logits (B, C)."""
        image = nn.functional.normalize(features.pooled.float(), dim=-1)
        return self.logit_scale * image @ self.text_embeddings.T


def fit_coop(backbone: Backbone, attribute: Attribute, train_features: ImageFeatures, train_labels: list[int],
             val_features: ImageFeatures, val_labels: list[int],
             config: BaselineConfig = BaselineConfig()) -> tuple[CoOpHead, dict]:
    """Learn CoOp's context on the pooled embeddings of ``train_features`` through the frozen text tower
    (seeded: same features and seed, same context), select the epoch on the validation features, and
    return the fixed-prompt head and the fit info."""
    torch.manual_seed(config.seed)
    learner = PromptLearner(backbone, attribute, seed=config.seed)
    scale = backbone.logit_scale

    def logits(pooled: torch.Tensor) -> torch.Tensor:
        image = nn.functional.normalize(pooled.float(), dim=-1)
        return scale * image @ learner().T

    info = fit_baseline(learner, [learner.ctx], logits, train_features.pooled.float(), train_labels,
                        val_features.pooled.float(), val_labels, attribute.classes, config, backbone.device)
    with torch.no_grad():
        head = CoOpHead(attribute, learner(), scale)
    info["n_ctx"] = learner.n_ctx
    return head, info
