"""Build megatron-core GPTModel chunks for this rank, with the layer spec of the implementation
megastack.layer_impl resolves (Transformer Engine, fused kernels or local), chosen in
`select_layer_spec` and nowhere else.

Weights are initialised *layout-invariantly*: every parameter's global tensor is drawn from a
generator seeded by (seed, checkpoint key, layer number), and each rank keeps its shard. A model
built at TP2 PP2 therefore holds exactly the weights of the same model built on one process,
which is what lets runs at different layouts be compared step for step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from megastack import layer_impl
from megastack.config import ModelConfig, ParallelConfig, to_transformer_config
from megastack.layer_impl import check_sequence_parallel, resolve_transformer_impl

logger = logging.getLogger(__name__)


def select_layer_spec(impl: str = "auto", qk_layernorm: bool = False):
    """Return (impl_name, ModuleSpec) for a transformer layer."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    impl = resolve_transformer_impl(impl)
    if impl == "transformer_engine":
        if not layer_impl.transformer_engine_available():
            raise ValueError(
                "--transformer-impl transformer_engine needs Transformer Engine and a CUDA device; "
                "install transformer-engine[pytorch] or use --transformer-impl local"
            )
        return impl, get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    if impl == "fused":
        from megastack.kernels.spec import get_gpt_layer_fused_spec

        return impl, get_gpt_layer_fused_spec(qk_layernorm=qk_layernorm)
    return impl, get_gpt_layer_local_spec(qk_layernorm=qk_layernorm)


def pipeline_p2p_options(parallel: ParallelConfig, vp_size: Optional[int], overlap: bool,
                         cuda: bool) -> dict[str, bool]:
    """megatron-core's pipeline send/receive settings for a layout."""
    # As Megatron-LM (--no-overlap-p2p-communication turns it off): the interleaved schedule
    # overlaps its sends and receives with compute; the other schedules cannot.
    overlap = overlap and vp_size is not None
    # gloo matches messages between two ranks in posting order; batched p2p posts send_prev
    # before send_next, which with PP=2 (prev == next) and interleaving swaps activations and
    # gradients (Megatron-LM refuses that case on NCCL too). The unbatched path orders them by
    # rank parity; overlapped p2p is unbatched by definition.
    batch = (cuda and not overlap
             and not (vp_size is not None and parallel.pipeline_model_parallel_size == 2))
    return {"overlap_p2p_comm": overlap, "batch_p2p_comm": batch}


def build_model_chunks(
    model_cfg: ModelConfig,
    parallel: ParallelConfig,
    *,
    seed: int = 1234,
    bf16: bool = False,
    fp16: bool = False,
    transformer_impl: str = "auto",
    recompute_granularity: Optional[str] = None,
    recompute_method: Optional[str] = None,
    recompute_num_layers: Optional[int] = None,
    calculate_per_token_loss: bool = False,
    overlap_p2p_comm: bool = True,
    transformer_options: Optional[dict[str, Any]] = None,
    meta: bool = False,
) -> list[torch.nn.Module]:
    """Build this rank's GPTModel chunks (one per virtual pipeline stage), initialised.

    `transformer_options`: further TransformerConfig fields that change how, not what, the
    model computes (e.g. cross_entropy_loss_fusion). `meta`: parameters on the meta device,
    neither allocated nor initialised (what the model's checkpoint holds, without its memory).
    Needs `megastack.runtime.initialize` to have set up megatron-core's parallel state.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    check_sequence_parallel(transformer_impl, parallel.tensor_model_parallel_size,
                            parallel.sequence_parallel)
    impl, spec = select_layer_spec(transformer_impl, qk_layernorm=model_cfg.qk_layernorm)
    vp_size = parallel.virtual_pipeline_size(model_cfg.num_layers)
    config = to_transformer_config(
        model_cfg,
        parallel,
        bf16=bf16,
        fp16=fp16,
        # On the meta device only when megatron-core creates parameters without a device.
        use_cpu_initialization=meta or not torch.cuda.is_available(),
        recompute_granularity=recompute_granularity,
        recompute_method=recompute_method,
        recompute_num_layers=recompute_num_layers,
        calculate_per_token_loss=calculate_per_token_loss,
        # Megatron's own init also tags tensor-parallel parameters (weights built with
        # perform_initialization=False miss the tags and get wrong grad norms under TP);
        # the layout-invariant init below then overwrites the values.
        perform_initialization=True,
        **pipeline_p2p_options(parallel, vp_size, overlap_p2p_comm, torch.cuda.is_available()),
        **(transformer_options or {}),
    )
    chunks = []
    for vp_stage in range(vp_size or 1):
        stage = vp_stage if vp_size else None
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = GPTModel(
                config=config,
                transformer_layer_spec=spec,
                vocab_size=model_cfg.vocab_size,
                max_sequence_length=model_cfg.max_position_embeddings,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False,
                                                                   vp_stage=stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False,
                                                                   vp_stage=stage),
                share_embeddings_and_output_weights=not model_cfg.untie_embeddings_and_output_weights,
                position_embedding_type=model_cfg.position_embedding_type,
                rotary_base=model_cfg.rotary_base,
                rope_scaling=model_cfg.rope_scaling,
                rope_scaling_factor=model_cfg.rope_scaling_factor,
                vp_stage=stage,
            )
        if torch.cuda.is_available() and not meta:
            model.cuda(torch.cuda.current_device())
        if bf16:
            model.bfloat16()
        elif fp16:
            model.half()
        chunks.append(model)
    if meta:
        return chunks
    for model in chunks:
        init_weights_layout_invariant(model, model_cfg, seed)
    logger.info("built %d model chunk(s) with the %s layer spec", len(chunks), impl)
    return chunks


def _sharded_items(model: torch.nn.Module):
    """Yield the ShardedTensors (factories such as SwiGLU's fc1 expanded) and ShardedObjects
    of a model's sharded state dict."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import (
        ShardedObject, ShardedTensor, ShardedTensorFactory,
    )

    for value in nested_values(model.sharded_state_dict()):
        if isinstance(value, ShardedTensorFactory):
            yield from (sub for sub in nested_values(value.build())
                        if isinstance(sub, ShardedTensor))
        elif isinstance(value, (ShardedTensor, ShardedObject)):
            yield value


def _sharded_tensors(model: torch.nn.Module):
    """Yield megatron ShardedTensors of a model, expanding factories (SwiGLU fc1)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    return (item for item in _sharded_items(model) if isinstance(item, ShardedTensor))


@dataclass(frozen=True)
class CheckpointTensor:
    """One key of a model's torch_dist checkpoint: its global shape and dtype; layer-stacked
    keys (``decoder.layers.*``) hold every layer on axis 0."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layer_stacked: bool


def checkpoint_contents(chunks: list[torch.nn.Module]
                        ) -> tuple[dict[str, CheckpointTensor], dict[str, Any]]:
    """What megatron-core's dist checkpointing saves of these chunks (e.g. built with
    `meta=True`): the tensors by key, and the ShardedObjects' values by unique key."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    tensors: dict[str, CheckpointTensor] = {}
    objects: dict[str, Any] = {}
    for chunk in chunks:
        for item in _sharded_items(chunk):  # one pass: a sharded state dict is not free
            if isinstance(item, ShardedObject):
                objects[item.unique_key] = item.data
            else:
                tensors[item.key] = CheckpointTensor(tuple(item.global_shape), item.dtype,
                                                     item.prepend_axis_num == 1)
    return tensors, objects


def init_kind(key: str) -> str:
    """How Megatron initialises a checkpoint key: ones, zeros, normal, scaled_normal or
    embedding (normal with the embedding std)."""
    name = key.rsplit(".", 1)[-1]
    if "norm" in key and name in ("weight", "layer_norm_weight"):
        return "ones"
    if name in ("bias", "layer_norm_bias"):
        return "zeros"
    if key.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return "scaled_normal"
    if key.startswith("embedding."):
        return "embedding"
    return "normal"


def init_global_tensor(key: str, shape, layer: Optional[int], model_cfg: ModelConfig, seed: int,
                       device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """The initial fp32 value of one global tensor (one layer's slice for `decoder.layers.*`):
    Megatron's normal(0, std), output projections std/sqrt(2L), embeddings their own std (if
    set), norms 1, biases 0, drawn from a generator seeded by (seed, key, layer) so that it does
    not depend on the layout."""
    kind = init_kind(key)
    if kind in ("ones", "zeros"):
        return (torch.ones if kind == "ones" else torch.zeros)(tuple(shape), device=device)
    std = model_cfg.init_method_std
    if kind == "scaled_normal":
        std = std / math.sqrt(2.0 * model_cfg.num_layers)
    elif kind == "embedding" and model_cfg.embedding_init_method_std is not None:
        std = model_cfg.embedding_init_method_std
    layer_index = () if layer is None else (layer,)
    gen = torch.Generator(device=device)
    gen.manual_seed(zlib.crc32(f"{seed}|{key}|{layer_index}".encode()) & 0x7FFFFFFF)
    full = torch.empty(tuple(shape), dtype=torch.float32, device=device)
    return full.normal_(0.0, std, generator=gen)


@torch.no_grad()
def init_weights_layout_invariant(model: torch.nn.Module, model_cfg: ModelConfig, seed: int) -> None:
    """Give every rank its shard of `init_global_tensor`, so weights do not depend on TP/PP/VP."""
    for sh in _sharded_tensors(model):
        data = sh.data
        prepend = sh.prepend_axis_num
        assert prepend <= 1, f"{sh.key}: unexpected {prepend} prepended axes"
        layer = sh.global_offset[0] if prepend else None
        device = data.device if data.device.type == "cuda" else torch.device("cpu")
        full = init_global_tensor(sh.key, sh.global_shape[prepend:], layer, model_cfg, seed, device)
        index = tuple(
            slice(off, off + size) for off, size in zip(sh.global_offset[prepend:], sh.local_shape)
        )
        data.copy_(full[index].to(data.dtype))


def count_parameters(chunks: list[torch.nn.Module]) -> int:
    return sum(p.numel() for m in chunks for p in m.parameters())
