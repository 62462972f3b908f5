"""Eight MHAdapter heads in one batched pass (inference).

Run one after another, 8 CLIP-MHAdapter heads are 8 × 6 small kernels over the same patch
tokens. ``FusedMHAdapterHeads`` stacks their weights and runs them together:

- the first Linear (W → 256) of every head is one matrix product over the shared tokens,
  (B·N, W) @ (W, H·256);
- the second Linear, the LayerNorm and the qkv projection are batched over heads (``bmm``);
  the LayerNorm's scale and shift are folded into the qkv weights and bias at build time;
- self-attention runs once per group of heads with the same attention-head count (the
  reference settings use 4, 8 and 16);
- only the mean over tokens of the attention output is ever used, and everything after the
  softmax is linear, so the mean is taken first (Dropout is the identity in eval):
  mean_n Σ_m a_nm (x_m W_vᵀ + b_v) = (ā x) W_vᵀ + b_v with ā = mean_n a_n· (rows of a sum to 1),
  and mean_N(o W_oᵀ + b_o) = mean_N(o) W_oᵀ + b_o. That drops the N×E×E value projection, the
  N×N×E attention-times-values product and the N×E×E output projection of every head: about
  27 % fewer multiply-accumulates than the module itself, for the same result.

The result equals the sequential heads to float rounding (``tests/test_fused_heads.py``
checks 1e-5 in fp32). ``HeadRunner`` is what inference calls: it fuses every eval-mode
MHAdapter head it can and runs the other heads (zero-shot, microCLIP, FAIR-style) as they are.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from classify.backbone import ImageFeatures
from classify.mhadapter import MHAdapterHead


class FusedMHAdapterHeads(nn.Module):
    """H MHAdapter heads with the same widths as one module: ``ImageFeatures`` -> {name: logits (B, C)}."""

    def __init__(self, heads: Mapping[str, MHAdapterHead]):
        super().__init__()
        if not heads:
            raise ValueError("no heads to fuse")
        heads = dict(heads)
        first = next(iter(heads.values()))
        for name, head in heads.items():
            if (head.width, head.embed_dim, head.config.bottleneck) != (first.width, first.embed_dim,
                                                                        first.config.bottleneck):
                raise ValueError(f"head {name} has other widths than {first.attribute.name}: cannot fuse")
        self.names = list(heads)
        self.embed_dim = first.embed_dim
        adapters = [head.adapter for head in heads.values()]
        stack = lambda tensors: torch.stack([t.detach() for t in tensors])  # noqa: E731
        with torch.no_grad():
            self.register_buffer("w1", torch.cat([a.mlp[0].weight.detach() for a in adapters]))  # (H·256, W)
            self.register_buffer("b1", torch.cat([a.mlp[0].bias.detach() for a in adapters]))
            self.register_buffer("w2t", stack(a.mlp[2].weight for a in adapters).transpose(1, 2).contiguous())
            self.register_buffer("b2", stack(a.mlp[2].bias for a in adapters).unsqueeze(1))  # (H, 1, E)
            self.register_buffer("out_wt", stack(a.attention.out_proj.weight for a in adapters).transpose(1, 2).contiguous())
            self.register_buffer("out_b", stack(a.attention.out_proj.bias for a in adapters).unsqueeze(1))
        self.ln_eps = [a.norm.eps for a in adapters]
        if len(set(self.ln_eps)) != 1:
            raise ValueError("heads with different LayerNorm eps cannot be fused")
        # attention groups: heads sharing an attention-head count run in one SDPA call
        self.groups: list[tuple[int, list[int]]] = []
        for count in sorted({a.attention.num_heads for a in adapters}):
            members = [i for i, a in enumerate(adapters) if a.attention.num_heads == count]
            self.groups.append((count, members))
            in_w = stack(adapters[i].attention.in_proj_weight for i in members)  # (G, 3E, E): q, k, v rows
            in_b = stack(adapters[i].attention.in_proj_bias for i in members)
            # fold the LayerNorm's affine into the projection: (n·γ + β)Wᵀ + b = n(W·diag γ)ᵀ + (Wβ + b)
            gamma = stack(adapters[i].norm.weight for i in members)  # (G, E)
            beta = stack(adapters[i].norm.bias for i in members)
            in_b = in_b + torch.einsum("gre,ge->gr", in_w, beta)
            in_w = in_w * gamma[:, None, :]
            e = first.embed_dim
            self.register_buffer(f"qk_wt_{count}", in_w[:, :2 * e].transpose(1, 2).contiguous())  # (G, E, 2E)
            self.register_buffer(f"qk_b_{count}", in_b[:, None, :2 * e].contiguous())
            self.register_buffer(f"v_w_{count}", in_w[:, 2 * e:].reshape(len(members), count, e // count, e).contiguous())
            self.register_buffer(f"v_b_{count}", in_b[:, None, 2 * e:].contiguous())  # (G, 1, E)
        self.blend = [head.config.blend for head in heads.values()]
        self.normalize_first = [head.config.normalize_before_blend for head in heads.values()]
        self.logit_scales = [head.logit_scale for head in heads.values()]
        for i, head in enumerate(heads.values()):
            self.register_buffer(f"text_{i}", head.text_embeddings.detach().clone())

    def adapted(self, tokens: torch.Tensor) -> torch.Tensor:
        """A(P) of every head: patch tokens (B, N, W) -> (H, B, E), in the tokens' dtype."""
        batch, n, _ = tokens.shape
        n_heads, e = len(self.names), self.embed_dim
        x = nn.functional.relu(nn.functional.linear(tokens.reshape(batch * n, -1), self.w1, self.b1))
        x = x.view(batch * n, n_heads, -1).transpose(0, 1)  # (H, B·N, 256)
        x = nn.functional.relu(torch.baddbmm(self.b2, x, self.w2t))  # (H, B·N, E)
        x = nn.functional.layer_norm(x, (e,), eps=self.ln_eps[0])  # its affine is folded into the projections
        pooled = x.new_empty(n_heads, batch, e)
        for count, members in self.groups:
            index = torch.tensor(members, device=x.device)
            g, d = len(members), e // count
            xg = x.index_select(0, index)  # (G, B·N, E)
            qk = torch.baddbmm(getattr(self, f"qk_b_{count}"), xg, getattr(self, f"qk_wt_{count}"))  # (G, B·N, 2E)
            q, k = qk.view(g * batch, n, 2, count, d).permute(2, 0, 3, 1, 4)  # (G·B, h, N, d) each
            # mean over queries of softmax(q·kᵀ/√d): the weight each token's value gets in the pooled output
            weights = torch.matmul(q, k.transpose(-1, -2)).mul_(d ** -0.5).softmax(dim=-1).mean(dim=-2)  # (G·B, h, N)
            mixed = torch.matmul(weights, xg.view(g * batch, n, e)).view(g, batch, count, e)  # (G, B, h, E)
            values = torch.einsum("gbhe,ghde->gbhd", mixed, getattr(self, f"v_w_{count}"))  # value projection last
            pooled[index] = values.reshape(g, batch, e) + getattr(self, f"v_b_{count}")
        return torch.baddbmm(self.out_b, pooled, self.out_wt)  # out_proj after the mean: exact (linear)

    def forward(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """Logits (B, C) in fp32 for every fused head, keyed by its name."""
        tokens = features.patch_tokens
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=tokens.is_cuda):
            adapted = self.adapted(tokens)
        adapted, raw_pooled = adapted.float(), features.pooled.float()
        logits = {}
        for i, name in enumerate(self.names):
            a, g = adapted[i], raw_pooled
            if self.normalize_first[i]:
                a, g = nn.functional.normalize(a, dim=-1), nn.functional.normalize(g, dim=-1)
            f = nn.functional.normalize(self.blend[i] * a + (1.0 - self.blend[i]) * g, dim=-1)
            logits[name] = self.logit_scales[i] * f @ getattr(self, f"text_{i}").T
        return logits


class HeadRunner:
    """Runs a set of heads on one batch of ``ImageFeatures``: eval-mode MHAdapter heads fused into
    one ``FusedMHAdapterHeads`` pass (when there are at least two), the others one by one."""

    def __init__(self, heads: Mapping[str, nn.Module], fuse: bool = True):
        self.heads = dict(heads)
        fusable = {name: head for name, head in self.heads.items()
                   if isinstance(head, MHAdapterHead) and not head.training}
        first = next(iter(fusable.values()), None)
        fusable = {name: head for name, head in fusable.items()
                   if (head.width, head.embed_dim) == (first.width, first.embed_dim)}
        self.fused = FusedMHAdapterHeads(fusable) if fuse and len(fusable) >= 2 else None
        if self.fused is not None:
            device = next(iter(fusable.values())).text_embeddings.device
            self.fused = self.fused.to(device)

    @property
    def fused_names(self) -> list[str]:
        """The heads that run in the fused pass."""
        return [] if self.fused is None else list(self.fused.names)

    @torch.inference_mode()
    def __call__(self, features: ImageFeatures) -> dict[str, torch.Tensor]:
        """Logits of every head, keyed (and ordered) as the heads were given."""
        fused = self.fused(features) if self.fused is not None else {}
        return {name: fused[name] if name in fused else head(features) for name, head in self.heads.items()}
