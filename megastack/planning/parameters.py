"""Exact parameter counts per pipeline stage and tensor-parallel rank, as megatron-core builds them.

Column-parallel weights (QKV, fc1, embedding and output rows) and their biases are split over
TP; row-parallel weights (attention output projection, fc2) are split too but their biases are
not; norms are replicated on every TP rank. With tied embeddings and PP > 1 the last stage keeps
its own copy of the word embedding as the output weight (megatron-core synchronises the two).
"""

from __future__ import annotations

from dataclasses import dataclass

from megastack.config import ModelConfig, ParallelConfig

from .stage_map import layout_placements


@dataclass(frozen=True)
class StageParameters:
    """Parameters held by one TP rank of one pipeline stage, by component."""

    stage: int
    embedding: int
    transformer_layers: int
    final_norm: int
    output_layer: int

    @property
    def total(self) -> int:
        return self.embedding + self.transformer_layers + self.final_norm + self.output_layer


def norm_parameters(model: ModelConfig) -> int:
    return model.hidden_size * (1 if model.normalization == "RMSNorm" else 2)


def layer_parameters(model: ModelConfig, tensor_parallel_size: int = 1) -> int:
    """One transformer layer's parameters on one TP rank."""
    t = tensor_parallel_size
    h, f = model.hidden_size, model.ffn_hidden_size
    q = model.query_size
    qkv_out = q + 2 * model.num_query_groups * model.head_dim
    fc1_out = 2 * f if model.swiglu else f
    params = (h * qkv_out + q * h + h * fc1_out + f * h) // t
    if model.qkv_bias:
        params += qkv_out // t
    if model.add_bias_linear:
        params += fc1_out // t + 2 * h  # row-parallel biases are not split
    if model.qk_layernorm:  # over head_dim, replicated on every TP rank
        params += 2 * model.head_dim * (1 if model.normalization == "RMSNorm" else 2)
    return params + 2 * norm_parameters(model)


def embedding_parameters(model: ModelConfig, tensor_parallel_size: int = 1) -> int:
    params = model.vocab_size // tensor_parallel_size * model.hidden_size
    if model.position_embedding_type == "learned_absolute":
        params += model.max_position_embeddings * model.hidden_size
    return params


def output_layer_parameters(model: ModelConfig, parallel: ParallelConfig) -> int:
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    if not model.untie_embeddings_and_output_weights and pp == 1:
        return 0  # the output layer reuses the embedding weight on the same rank
    return model.vocab_size // tp * model.hidden_size


def stage_parameter_counts(model: ModelConfig, parallel: ParallelConfig) -> list[StageParameters]:
    """Per pipeline stage, the parameters one TP rank of that stage holds."""
    tp = parallel.tensor_model_parallel_size
    placements = layout_placements(model.num_layers, parallel)
    per_layer = layer_parameters(model, tp)
    stages = []
    for stage in range(parallel.pipeline_model_parallel_size):
        mine = [p for p in placements if p.stage == stage]
        has_emb = any(p.has_embedding for p in mine)
        has_out = any(p.has_output_layer for p in mine)
        stages.append(
            StageParameters(
                stage=stage,
                embedding=embedding_parameters(model, tp) if has_emb else 0,
                transformer_layers=per_layer * sum(p.num_layers for p in mine),
                final_norm=norm_parameters(model) if has_out else 0,
                output_layer=output_layer_parameters(model, parallel) if has_out else 0,
            )
        )
    return stages


def total_parameters(model: ModelConfig) -> int:
    """The whole model's parameters (TP = PP = 1), equal to `ModelConfig.num_parameters()`."""
    return stage_parameter_counts(model, ParallelConfig())[0].total
