"""G_learn (LiGO-style): a learned linear map from the small model's weights to the large one's.

Every target tensor is a linear function of the source tensors:

- width: ``W' = A_out @ W @ A_in^T`` with one learnable matrix per dimension role, shared by all
  layers (as in LiGO): ``hidden_write`` (rows that write the residual stream, norm weights,
  embedding columns), ``hidden_read`` (columns that read it), ``qkv_write``, ``attn_read``,
  ``ffn_write`` (applied to SwiGLU's gate and up halves alike) and ``ffn_read``. They start as the
  `direct` operator's selection matrices, so the untrained map is exactly G_direct (function
  preserving). Roles whose size does not change keep the identity and have no parameters.
- depth: target layer t = sum_j w[t, j] * source layer j, one learnable [L_dst, L_src] matrix per
  layer-stacked key, starting as the stacking plan's one-hot rows (G_stack).

`train_learned_growth` fits the maps for N steps on the language-model loss of the target model,
whose weights come from the maps (``torch.func.functional_call`` on a one-process megatron-core
GPTModel); `LearnedGrowth.materialise` then gives the target global state dict.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Optional, Union

import torch

from megastack.config import ModelConfig, ParallelConfig
from megastack.growth.depth import is_layer_key
from megastack.growth.plans import StackingPlan
from megastack.growth.width import WidthGrowth, key_rule

logger = logging.getLogger(__name__)

# (role of a dim, its kind) -> the learnable map that expands it.
_MAP_FOR = {
    ("hidden", "write"): "hidden_write",
    ("hidden", "norm"): "hidden_write",
    ("hidden", "read"): "hidden_read",
    ("qkv", "write"): "qkv_write",
    ("attn", "read"): "attn_read",
    ("ffn_rows", "write"): "ffn_write",
    ("ffn", "read"): "ffn_read",
}
# The AxisMap (of WidthGrowth) and selection kind each learnable map starts from.
_INIT_FROM = {
    "hidden_write": ("hidden", "write"),
    "hidden_read": ("hidden", "read"),
    "qkv_write": ("qkv", "write"),
    "attn_read": ("attn", "read"),
    "ffn_write": ("ffn", "write"),
    "ffn_read": ("ffn", "read"),
}


def _depth_param_name(key: str) -> str:
    return key.replace(".", "__")


class LearnedGrowth(torch.nn.Module):
    """The learnable growth maps from `src_cfg` to `dst_cfg` for the checkpoint `keys`."""

    def __init__(self, src_cfg: ModelConfig, dst_cfg: ModelConfig, keys: Iterable[str],
                 plan: Optional[StackingPlan] = None, seed: int = 1234) -> None:
        super().__init__()
        if not src_cfg.untie_embeddings_and_output_weights:
            raise ValueError("G_learn supports untied embeddings only (set untie_embeddings_and_output_weights)")
        if plan is None:
            if src_cfg.num_layers != dst_cfg.num_layers:
                raise ValueError(
                    f"G_learn from {src_cfg.num_layers} to {dst_cfg.num_layers} layers needs a "
                    f"--stacking-list to start the depth map from"
                )
            plan = StackingPlan(tuple(range(src_cfg.num_layers)))
        plan.validate(src_cfg.num_layers, dst_cfg.num_layers)
        self.src_cfg, self.dst_cfg, self.plan = src_cfg, dst_cfg, plan
        self.keys = tuple(keys)
        for key in self.keys:
            key_rule(key)  # unknown keys fail here, not mid-training

        direct = WidthGrowth(src_cfg, dst_cfg, "direct", seed)
        self.width = torch.nn.ParameterDict()
        for name, (role, kind) in _INIT_FROM.items():
            amap = direct.maps[role]
            if amap.n_dst != amap.n_src:
                self.width[name] = torch.nn.Parameter(amap.selection_matrix(kind))

        one_hot = torch.zeros(dst_cfg.num_layers, src_cfg.num_layers)
        one_hot[torch.arange(dst_cfg.num_layers), torch.tensor(plan.layers)] = 1.0
        self.depth = torch.nn.ParameterDict(
            {_depth_param_name(k): torch.nn.Parameter(one_hot.clone()) for k in self.keys if is_layer_key(k)}
        )

    def grow(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """The target tensor for `key` as a differentiable function of the maps."""
        rule = key_rule(key)
        lead = tensor.dim() - len(rule)
        out = tensor.to(torch.float32)
        for i, role_kind in enumerate(rule):
            name = _MAP_FOR.get(role_kind) if role_kind is not None else None
            if name is None or name not in self.width:
                continue
            out = self._apply(out, lead + i, self.width[name], split=(name == "ffn_write" and self.src_cfg.swiglu))
        if is_layer_key(key):
            out = torch.einsum("tl,l...->t...", self.depth[_depth_param_name(key)], out)
        return out

    @staticmethod
    def _apply(x: torch.Tensor, dim: int, matrix: torch.Tensor, split: bool) -> torch.Tensor:
        if split:  # SwiGLU [gate; up]: the neuron map applies to each half
            gate, up = x.chunk(2, dim=dim)
            return torch.cat([LearnedGrowth._apply(gate, dim, matrix, False),
                              LearnedGrowth._apply(up, dim, matrix, False)], dim=dim)
        return (x.movedim(dim, -1) @ matrix.T).movedim(-1, dim)

    def forward(self, source_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [k for k in self.keys if k not in source_state]
        if missing:
            raise KeyError(f"source state lacks keys the maps were built for: {missing}")
        return {k: self.grow(k, source_state[k]) for k in self.keys}

    @torch.no_grad()
    def materialise(self, source_state: dict[str, torch.Tensor],
                    dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
        """The target global state dict (detached), in `dtype` or each source tensor's dtype."""
        return {k: v.to(dtype or source_state[k].dtype).contiguous() for k, v in self(source_state).items()}


Batch = Union[torch.Tensor, dict]


def _lm_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(tokens, labels, position_ids, loss_mask) from a [b, s+1] token tensor or a GPTDataset
    batch dict (tokens, labels, loss_mask, position_ids)."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() != 2 or batch.shape[1] < 2:
            raise ValueError(f"a token batch must be [batch, seq+1] with seq >= 1, got {tuple(batch.shape)}")
        tokens, labels = batch[:, :-1], batch[:, 1:]
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
        return tokens, labels, positions, None
    tokens, labels = batch["tokens"], batch["labels"]
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    return tokens, labels, positions, batch.get("loss_mask")


def train_learned_growth(
    growth: LearnedGrowth,
    source_state: dict[str, torch.Tensor],
    batches: Iterator[Batch],
    steps: int,
    lr: float = 1e-3,
    seed: int = 1234,
    log_interval: int = 1,
) -> list[float]:
    """Fit the maps for `steps` Adam steps on the target model's LM loss; return the losses.

    Needs megatron-core's parallel state at TP=1, PP=1 (``megastack.runtime.initialize(
    ParallelConfig(), ...)``): the target model is held whole by this process.
    """
    from megatron.core import parallel_state
    from torch.func import functional_call

    from megastack.growth.state import parameter_sources
    from megastack.model import build_model_chunks

    if steps < 0:
        raise ValueError(f"G_learn steps must be >= 0, got {steps}")
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if (tp, pp) != (1, 1):
        raise ValueError(
            f"G_learn trains its maps on one process; the parallel state is TP={tp}, PP={pp}. "
            f"Initialise with ParallelConfig() (TP=1, PP=1) for the map training"
        )
    model = build_model_chunks(growth.dst_cfg, ParallelConfig(), seed=seed)[0]
    model.requires_grad_(False)
    sources = parameter_sources(model)
    optimizer = torch.optim.Adam([p for p in growth.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    for step in range(steps):
        tokens, labels, positions, loss_mask = _lm_inputs(next(batches))
        target = growth(source_state)
        params = {name: target[key] if layer is None else target[key][layer]
                  for name, (key, layer) in sources.items()}
        per_token = functional_call(model, params, (tokens, positions, None), {"labels": labels})
        if loss_mask is None:
            loss = per_token.float().mean()
        else:
            mask = loss_mask.float()
            loss = (per_token.float() * mask).sum() / mask.sum().clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if log_interval and (step % log_interval == 0 or step == steps - 1):
            logger.info("G_learn step %d/%d: lm loss %.4f", step + 1, steps, losses[-1])
    return losses
