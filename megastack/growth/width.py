"""Width growth on full (global) tensors: hidden size, attention heads/query groups, FFN size.

Each tensor dimension that growth touches has a *role* -- ``hidden`` (the residual stream),
``qkv`` (rows of linear_qkv, per-query-group interleaved ``[q heads of g, k, v]``), ``attn``
(the concatenated head outputs read by linear_proj), ``ffn`` (FFN neurons read by linear_fc2) and
``ffn_rows`` (linear_fc1's ``[gate; up]`` rows) -- and a *kind*: ``write`` (the tensor produces
these units), ``read`` (it consumes them) or ``norm`` (a norm parameter over the hidden units).
A `WidthGrowth` decides one `AxisMap` per role (target unit -> source unit, or -1 for a new unit)
and applies it to every key, so all keys agree.

Operators:

- ``direct`` (G_direct, Net2Net/bert2BERT-style splitting; exactly function preserving): every
  target unit copies a source unit (seeded choice for the extra ones); ``read`` dims are divided
  by how many copies their source unit has, so sums are unchanged. Attention grows by whole heads
  (head_dim fixed); a new query group copies a source group's k and v together with its q heads,
  and new q heads inside a group copy heads of the source group they map to, so every copied
  head still attends with its original k/v. SwiGLU's gate and up rows are duplicated together.
  Hidden size must grow by an integer factor k with every unit copied exactly k times: then
  mean(x^2) over the widened residual equals the source's, so RMSNorm (and LayerNorm: mean and
  variance) give the same normalised values -- exact, eps included. Non-integer factors cannot
  be exact with a fixed eps and are rejected. With tied embeddings the final norm is divided by
  k instead of the (shared) output weight.
- ``zero`` (G_zero): existing units copied into place; new heads/neurons get random incoming and
  zero outgoing weights (exact); new hidden units get zero in everything that writes the residual
  stream (embedding, linear_proj, linear_fc2 rows), so they stay 0, and random reads. A zero unit
  lowers RMSNorm's mean(x^2) by h/h', which the norm weights of existing units absorb
  (multiplied by sqrt(h/h')); this is exact up to the norm's eps (not at all for LayerNorm).
- ``random`` (G_random): existing units copied into place, everything new initialised as a fresh
  target model would be (normal(0, std), output projections std/sqrt(2L), norms 1).

Width growth applies to the trailing dims, so it works on layer-stacked tensors [L, ...] and on
single layers alike; combine with depth growth by applying depth first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import torch

from megastack.config import ModelConfig
from megastack.growth.depth import is_layer_key
from megastack.growth.init import fresh_tensor

logger = logging.getLogger(__name__)

WIDTH_OPERATORS = ("direct", "zero", "random")
# The ModelConfig fields width growth changes (head_dim stays).
WIDTH_FIELDS = ("hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size")


def widths(model: ModelConfig) -> dict[str, int]:
    """`model`'s WIDTH_FIELDS."""
    return {name: getattr(model, name) for name in WIDTH_FIELDS}

# Checkpoint key suffix -> (role, kind) of each trailing dim; None: the dim does not change.
KEY_RULES: dict[str, tuple[Optional[tuple[str, str]], ...]] = {
    "embedding.word_embeddings.weight": (None, ("hidden", "write")),
    "embedding.position_embeddings.weight": (None, ("hidden", "write")),
    "self_attention.linear_qkv.layer_norm_weight": (("hidden", "norm"),),
    "self_attention.linear_qkv.layer_norm_bias": (("hidden", "norm"),),
    "self_attention.linear_qkv.weight": (("qkv", "write"), ("hidden", "read")),
    "self_attention.linear_qkv.bias": (("qkv", "write"),),
    "self_attention.q_layernorm.weight": (None,),  # over head_dim, which never changes
    "self_attention.q_layernorm.bias": (None,),
    "self_attention.k_layernorm.weight": (None,),
    "self_attention.k_layernorm.bias": (None,),
    "self_attention.linear_proj.weight": (("hidden", "write"), ("attn", "read")),
    "self_attention.linear_proj.bias": (("hidden", "write"),),
    "mlp.linear_fc1.layer_norm_weight": (("hidden", "norm"),),
    "mlp.linear_fc1.layer_norm_bias": (("hidden", "norm"),),
    "mlp.linear_fc1.weight": (("ffn_rows", "write"), ("hidden", "read")),
    "mlp.linear_fc1.bias": (("ffn_rows", "write"),),
    "mlp.linear_fc2.weight": (("hidden", "write"), ("ffn", "read")),
    "mlp.linear_fc2.bias": (("hidden", "write"),),
    "decoder.final_layernorm.weight": (("hidden", "norm"),),
    "decoder.final_layernorm.bias": (("hidden", "norm"),),
    "output_layer.weight": (None, ("hidden", "read")),
    "output_layer.bias": (None,),
}


def key_rule(key: str) -> tuple[Optional[tuple[str, str]], ...]:
    """The (role, kind) per trailing dim for a checkpoint key; ValueError for unknown keys."""
    matches = [suffix for suffix in KEY_RULES if key.endswith(suffix)]
    if not matches:
        raise ValueError(
            f"no width-growth rule for checkpoint key {key!r}; known suffixes: {sorted(KEY_RULES)}"
        )
    return KEY_RULES[max(matches, key=len)]


@dataclass(frozen=True)
class AxisMap:
    """Target unit i copies source unit ``src[i]`` (-1: a new unit)."""

    src: torch.Tensor  # long [n_dst]
    n_src: int

    @property
    def n_dst(self) -> int:
        return int(self.src.numel())

    @property
    def existing(self) -> torch.Tensor:
        """Target positions that copy a source unit."""
        return torch.nonzero(self.src >= 0).flatten()

    @property
    def new(self) -> torch.Tensor:
        return torch.nonzero(self.src < 0).flatten()

    def copies(self) -> torch.Tensor:
        """Per target unit: how many target units copy the same source unit (1 for new units)."""
        counts = torch.bincount(self.src[self.src >= 0], minlength=self.n_src)
        return torch.where(self.src >= 0, counts[self.src.clamp(min=0)], 1).to(torch.float64)

    def selection_matrix(self, kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[n_dst, n_src]: one-hot rows (``write``/``norm``), divided by the copy count for ``read``."""
        m = torch.zeros(self.n_dst, self.n_src, dtype=torch.float64)
        rows = self.existing
        m[rows, self.src[rows]] = 1.0
        if kind == "read":
            m = m / self.copies()[:, None]
        return m.to(dtype)


def expansion_map(n_src: int, n_dst: int, gen: torch.Generator) -> torch.Tensor:
    """Identity for the first n_src units, then seeded permutations of the source units for the
    extra ones, so copy counts differ by at most one (and are all equal for integer factors)."""
    extra = n_dst - n_src
    perms = [torch.randperm(n_src, generator=gen) for _ in range(-(-extra // n_src))] if extra else []
    return torch.cat([torch.arange(n_src)] + perms)[:n_dst]


def embed_map(n_src: int, n_dst: int) -> torch.Tensor:
    """Source units keep their positions; the rest are new (-1)."""
    return torch.cat([torch.arange(n_src), torch.full((n_dst - n_src,), -1, dtype=torch.long)])


def validate_width_growth(src: ModelConfig, dst: ModelConfig, operator: str) -> None:
    """ValueError naming what to change when `dst` is not a width growth of `src`."""
    if operator not in WIDTH_OPERATORS:
        raise ValueError(f"--width-operator must be one of {WIDTH_OPERATORS}, got {operator!r}")
    same = ("vocab_size", "normalization", "swiglu", "add_bias_linear", "qkv_bias",
            "qk_layernorm", "position_embedding_type", "untie_embeddings_and_output_weights")
    for name in same:
        if getattr(src, name) != getattr(dst, name):
            raise ValueError(
                f"width growth keeps {name} fixed: source has {getattr(src, name)!r}, target "
                f"{getattr(dst, name)!r}"
            )
    # Before the head_dim check, whose advice would name a shrinking target.
    for name in ("hidden_size", "ffn_hidden_size", "num_query_groups"):
        if getattr(dst, name) < getattr(src, name):
            raise ValueError(
                f"width growth cannot shrink {name}: source {getattr(src, name)}, target {getattr(dst, name)}"
            )
    if dst.head_dim != src.head_dim:
        raise ValueError(
            f"width growth keeps head_dim = hidden/heads fixed ({src.head_dim}); the target has "
            f"{dst.hidden_size}/{dst.num_attention_heads} = {dst.head_dim}: set "
            f"--target-num-attention-heads {dst.hidden_size // src.head_dim}"
            if dst.hidden_size % src.head_dim == 0 else
            f"width growth keeps head_dim = {src.head_dim} fixed, so the target hidden size must "
            f"be a multiple of {src.head_dim} (the target has {dst.hidden_size})"
        )
    src_ratio = src.num_attention_heads // src.num_query_groups
    dst_ratio = dst.num_attention_heads // dst.num_query_groups
    if dst_ratio < src_ratio:
        raise ValueError(
            f"width growth keeps every query group's heads: the source has {src_ratio} query heads "
            f"per group, the target {dst.num_attention_heads}/{dst.num_query_groups} = {dst_ratio}; "
            f"use --target-num-query-groups {dst.num_attention_heads // src_ratio} or fewer"
        )
    if operator == "direct" and dst.hidden_size % src.hidden_size != 0:
        raise ValueError(
            f"direct width growth copies every hidden unit the same number of times (the only way "
            f"RMSNorm stays exact), so --target-hidden-size {dst.hidden_size} must be a multiple of "
            f"{src.hidden_size}; try {2 * src.hidden_size}"
        )


class WidthGrowth:
    """Per-key width growth from `src_cfg` to `dst_cfg`; the unit mapping is decided once here.

    `transform(key, tensor)` takes the source's full global tensor for one checkpoint key (layer
    axis first for `decoder.layers.*` keys) and returns the target's.
    """

    def __init__(self, src_cfg: ModelConfig, dst_cfg: ModelConfig, operator: str = "direct",
                 seed: int = 1234) -> None:
        validate_width_growth(src_cfg, dst_cfg, operator)
        self.src_cfg, self.dst_cfg, self.operator, self.seed = src_cfg, dst_cfg, operator, seed
        self.maps = self._decide_maps(torch.Generator().manual_seed(seed))
        if operator == "zero" and self.hidden_factor != 1 and src_cfg.normalization != "RMSNorm":
            logger.warning("zero width growth of the hidden size is not function preserving with %s",
                           src_cfg.normalization)

    @property
    def hidden_factor(self) -> float:
        return self.dst_cfg.hidden_size / self.src_cfg.hidden_size

    def _decide_maps(self, gen: torch.Generator) -> dict[str, AxisMap]:
        s, d = self.src_cfg, self.dst_cfg
        grow = (lambda n, m: expansion_map(n, m, gen)) if self.operator == "direct" else embed_map
        hidden = grow(s.hidden_size, d.hidden_size)
        groups = grow(s.num_query_groups, d.num_query_groups)
        r_src = s.num_attention_heads // s.num_query_groups
        r_dst = d.num_attention_heads // d.num_query_groups
        heads_in_group = [grow(r_src, r_dst) for _ in range(d.num_query_groups)]
        ffn = grow(s.ffn_hidden_size, d.ffn_hidden_size)

        hd = s.head_dim
        dims = torch.arange(hd)
        attn, qkv = [], []
        for g_dst in range(d.num_query_groups):
            g_src = int(groups[g_dst])
            base = g_src * (r_src + 2) * hd
            for j_src in heads_in_group[g_dst].tolist():
                head = g_src * r_src + j_src if g_src >= 0 and j_src >= 0 else -1
                attn.append(head * hd + dims if head >= 0 else torch.full((hd,), -1))
                qkv.append(base + j_src * hd + dims if head >= 0 else torch.full((hd,), -1))
            for part in (r_src, r_src + 1):  # k, then v, of the group
                qkv.append(base + part * hd + dims if g_src >= 0 else torch.full((hd,), -1))
        ffn_rows = ffn
        if s.swiglu:  # [gate; up]: neuron n's gate row n and up row f + n move together
            ffn_rows = torch.cat([ffn, torch.where(ffn >= 0, ffn + s.ffn_hidden_size, -1)])
        n_ffn_rows = s.ffn_hidden_size * (2 if s.swiglu else 1)
        qkv_src = (s.num_attention_heads + 2 * s.num_query_groups) * hd
        return {
            "hidden": AxisMap(hidden, s.hidden_size),
            "attn": AxisMap(torch.cat(attn), s.num_attention_heads * hd),
            "qkv": AxisMap(torch.cat(qkv), qkv_src),
            "ffn": AxisMap(ffn, s.ffn_hidden_size),
            "ffn_rows": AxisMap(ffn_rows, n_ffn_rows),
        }

    # ---- the per-key transform -----------------------------------------------------------------
    def target_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape `transform` returns for a source tensor of `shape`, without any data."""
        rule = key_rule(key)
        lead = len(shape) - len(rule)
        if lead < 0:
            raise ValueError(f"{key}: expected at least {len(rule)} dims, got shape {tuple(shape)}")
        return tuple(shape[:lead]) + tuple(
            shape[lead + i] if rk is None else self.maps[rk[0]].n_dst for i, rk in enumerate(rule)
        )

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        rule = key_rule(key)
        lead = tensor.dim() - len(rule)
        if lead not in ((0, 1) if is_layer_key(key) else (0,)):
            raise ValueError(
                f"{key}: expected {len(rule)} dims (plus a leading layer axis for layer keys), got "
                f"shape {tuple(tensor.shape)}"
            )
        for i, role_kind in enumerate(rule):
            if role_kind is not None and tensor.shape[lead + i] != self.maps[role_kind[0]].n_src:
                raise ValueError(
                    f"{key}: dim {lead + i} has size {tensor.shape[lead + i]}, but the source config "
                    f"gives {self.maps[role_kind[0]].n_src} for {role_kind[0]}"
                )
        if self.operator == "direct":
            return self._direct(key, tensor, rule, lead)
        return self._embed(key, tensor, rule, lead)

    def _direct(self, key, tensor, rule, lead) -> torch.Tensor:
        out = tensor
        for i, role_kind in enumerate(rule):
            if role_kind is None:
                continue
            role, kind = role_kind
            amap = self.maps[role]
            out = out.index_select(lead + i, amap.src.to(out.device))
            if kind == "read":
                shape = [1] * out.dim()
                shape[lead + i] = -1
                out = out / amap.copies().to(out.dtype).to(out.device).view(shape)
        if (key.endswith(("decoder.final_layernorm.weight", "decoder.final_layernorm.bias"))
                and not self.src_cfg.untie_embeddings_and_output_weights):
            # The shared embedding cannot be both copied (input) and divided (output): divide the
            # final norm's output instead, which feeds only the output layer.
            out = out / self.hidden_factor
        return out.contiguous()

    def _embed(self, key, tensor, rule, lead) -> torch.Tensor:
        target_shape = list(tensor.shape[:lead]) + [
            tensor.shape[lead + i] if rk is None else self.maps[rk[0]].n_dst for i, rk in enumerate(rule)
        ]
        out = self._fresh(key, target_shape, lead, tensor.dtype).to(tensor.device)
        # Copy the source into the target positions of its units.
        src_part, index = tensor, [slice(None)] * out.dim()
        changed = [i for i, rk in enumerate(rule) if rk is not None]
        for n, i in enumerate(changed):
            amap = self.maps[rule[i][0]]
            pos = amap.existing
            src_part = src_part.index_select(lead + i, amap.src[pos].to(tensor.device))
            shape = [1] * len(changed)
            shape[n] = -1
            index[lead + i] = pos.view(shape).to(tensor.device)
        out[tuple(index)] = src_part
        if self.operator == "zero":
            self._zero_fixups(out, rule, lead)
        return out

    def _fresh(self, key: str, shape: list[int], lead: int, dtype: torch.dtype) -> torch.Tensor:
        if lead == 0:
            return fresh_tensor(key, shape, None, self.dst_cfg, self.seed, dtype)
        return torch.stack([fresh_tensor(key, shape[1:], l, self.dst_cfg, self.seed, dtype)
                            for l in range(shape[0])])

    def _zero_fixups(self, out: torch.Tensor, rule, lead: int) -> None:
        for i, role_kind in enumerate(rule):
            if role_kind is None:
                continue
            role, kind = role_kind
            new = self.maps[role].new.to(out.device)
            if new.numel() == 0:
                continue
            if (role == "hidden" and kind == "write") or (role in ("attn", "ffn") and kind == "read"):
                out.index_fill_(lead + i, new, 0.0)
            if role == "hidden" and kind == "norm" and self.src_cfg.normalization == "RMSNorm":
                existing = self.maps[role].existing.to(out.device)
                scale = math.sqrt(self.src_cfg.hidden_size / self.dst_cfg.hidden_size)
                out.index_copy_(lead + i, existing, out.index_select(lead + i, existing) * scale)
