"""Grow a torch_dist checkpoint offline: SRC (any TP/PP layout) -> DST (loads at the target layout).

Layer-stacked tensors are global, so growth never builds a model: each key's full global tensor
is read, passed through the depth operator (and the width operator when widths change) and
written back with the target's global shape. "Re-sharding" is then free: megatron-core loads the
written checkpoint at whatever TP/PP/VP the target model is built with; the target layout is
validated here and recorded in the common state.

DST is a save root: DST/iter_0000000 + DST/latest_checkpointed_iteration.txt, built in a new
directory beside it (DST.tmp-XXXXXXXX, created for this run) and renamed into place only when
complete. The source, and anything this run did not create, is only read.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from megastack.checkpoint import output_dir
from megastack.checkpoint.dist_reader import COMMON_FILE, DistCheckpointReader
from megastack.checkpoint.dist_writer import DistCheckpointWriter
from megastack.checkpoint.layer_map import LayerPlacement, format_layer_map, growth_layer_map
from megastack.checkpoint.training_checkpoint import (
    LATEST_FILE,
    checkpoint_dir,
    model_record_from_megatron_args,
    resolve_checkpoint,
    write_latest,
)
from megastack.config import PIPELINE_SPLIT_FIELDS, ModelConfig, ParallelConfig
from megastack.growth.depth import DEPTH_OPERATORS, DepthGrowth, is_layer_key
from megastack.growth.plans import StackingPlan, parse_stacking_list
from megastack.growth.width import WIDTH_OPERATORS, WidthGrowth
from megastack.paths import check_output_dir

logger = logging.getLogger(__name__)

GROWN_ITERATION = 0
OPTIMIZER_PREFIX = "optimizer."
# megatron-core's optimizer state keys: optimizer.state.<state name>.<model key>
OPTIMIZER_STATE_KEY = re.compile(r"^optimizer\.state\.(?P<name>[^.]+)\.(?P<model_key>.+)$")
# Master weights are weights (grown like them); every other state is a moment (copied or zeroed).
# "fp32_param": the regular optimizer with bf16/fp16 params; "param": the distributed optimizer's
# fully_reshardable state (its fp32 main params).
MASTER_WEIGHT_STATES = ("fp32_param", "param")
# ShardedObject unique keys: <key>/shard_<offsets>_<shape>, dot-separated per axis.
OBJECT_SHARD_KEY = re.compile(r"^(?P<key>.+)/shard_(?P<offsets>[\d.]+)_(?P<shape>[\d.]+)$")
RNG_OBJECT_KEY = "rng_state"
# Depth operators that only copy layers (target layer i = source layer plan[i], moments too).
ROW_COPY_OPERATORS = ("stack", "shrink")
# Megatron argument names that describe the model / layout, rewritten in the stored args.
_MODEL_ARG_NAMES = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                    "num_query_groups")


@dataclass(frozen=True)
class GrowthReport:
    source_checkpoint: str
    source_iteration: Optional[int]
    destination: str
    checkpoint_dir: str
    source_model: ModelConfig
    target_model: ModelConfig
    source_parallel: ParallelConfig
    target_parallel: ParallelConfig
    operator: str
    width_operator: Optional[str]
    stacking_list: tuple[int, ...]
    layer_map: tuple[LayerPlacement, ...]
    tensors_written: int
    objects_written: int
    bytes_written: int
    records_copied: int  # layer records copied byte for byte from the source
    optimizer_state: str  # "dropped", "carried" or "absent" (the source had none)
    seconds: float

    def format_map(self) -> str:
        interleaved = (self.target_parallel.virtual_pipeline_size(self.target_model.num_layers)
                       is not None)
        return format_layer_map(self.layer_map, interleaved=interleaved)

    def summary(self) -> str:
        s, t = self.source_model, self.target_model
        sp, tp = self.source_parallel, self.target_parallel
        vp = tp.num_layers_per_virtual_pipeline_stage
        chunks = tp.num_virtual_stages_per_pipeline_rank
        optimizer = {
            "dropped": "dropped (train with a fresh optimizer and LR re-warmup)",
            "carried": "Adam moments carried through the depth operator",
            "absent": "none in the source",
        }[self.optimizer_state]
        return "\n".join([
            f"source: {self.source_checkpoint} (iteration {self.source_iteration}, "
            f"{s.num_layers} layers, hidden {s.hidden_size}, {s.num_parameters() / 1e6:.1f}M "
            f"params, TP{sp.tensor_model_parallel_size} PP{sp.pipeline_model_parallel_size})",
            f"target: {self.checkpoint_dir} ({t.num_layers} layers, hidden {t.hidden_size}, "
            f"{t.num_parameters() / 1e6:.1f}M params, TP{tp.tensor_model_parallel_size} "
            f"PP{tp.pipeline_model_parallel_size}" + (f" VP {vp} layers/chunk" if vp else "")
            + (f" VP {chunks} chunks/stage" if chunks else "")
            + (" with " + "/".join(map(str, tp.stage_num_layers(t.num_layers)))
               + " layers per stage" if tp.uneven_pipeline else "") + ")",
            f"depth operator: {self.operator}, stacking list {list(self.stacking_list)}"
            + (f"; width operator: {self.width_operator}" if self.width_operator else ""),
            f"wrote {self.tensors_written} tensors ({self.bytes_written / 1e6:.1f} MB) and "
            f"{self.objects_written} objects in {self.seconds:.1f} s"
            + (f" ({self.records_copied} layer records copied verbatim)"
               if self.records_copied else ""),
            f"optimizer state: {optimizer}",
        ] + ([
            "G_random: train it with --growth-mask-iters N to fade the new parts in over N "
            "iterations (MSG), starting from the small model's function"
        ] if "random" in (self.operator, self.width_operator) else []))


def grow_checkpoint(
    src: str,
    dst: str,
    *,
    stacking_list: str,
    operator: str = "stack",
    target_num_layers: Optional[int] = None,
    target_tensor_parallel_size: Optional[int] = None,
    target_pipeline_parallel_size: Optional[int] = None,
    target_num_layers_per_virtual_pipeline_stage: Optional[int] = None,
    target_decoder_first_pipeline_num_layers: Optional[int] = None,
    target_decoder_last_pipeline_num_layers: Optional[int] = None,
    target_account_for_embedding_in_pipeline_split: bool = False,
    target_account_for_loss_in_pipeline_split: bool = False,
    target_num_virtual_stages_per_pipeline_rank: Optional[int] = None,
    keep_optimizer_state: bool = False,
    target_hidden_size: Optional[int] = None,
    target_ffn_hidden_size: Optional[int] = None,
    target_num_attention_heads: Optional[int] = None,
    target_num_query_groups: Optional[int] = None,
    width_operator: str = "direct",
    seed: int = 1234,
    force: bool = False,
    fsync: bool = True,
) -> GrowthReport:
    """Grow checkpoint SRC (save root or iter dir) into save root DST; see the module doc.

    Raises ValueError (naming the flag or path) on any invalid input, before DST is touched.
    `force` replaces a DST that holds an earlier *grown* checkpoint (never any other data).
    """
    start = time.monotonic()
    ckpt = _resolve_source(src)
    reader = DistCheckpointReader(ckpt)
    common = reader.load_common()
    src_model = source_model_config(common, ckpt)
    src_parallel = source_parallel_config(common)
    _check_layer_axis(reader, src_model)

    plan = parse_stacking_list(stacking_list)
    if target_num_layers is not None and target_num_layers != len(plan):
        raise ValueError(f"--stacking-list has {len(plan)} entries but --target-num-layers is "
                         f"{target_num_layers}; parsed list: {list(plan.layers)}")
    if operator not in DEPTH_OPERATORS:
        raise ValueError(f"--operator must be one of {', '.join(DEPTH_OPERATORS)}, got {operator!r}")
    depth_model = src_model.replace(num_layers=len(plan))
    depth = DepthGrowth(plan, operator, depth_model, seed, source_num_layers=src_model.num_layers)
    dst_model = widened_model(depth_model, target_hidden_size, target_ffn_hidden_size,
                              target_num_attention_heads, target_num_query_groups)
    width = None
    if dst_model != depth_model:
        if width_operator not in WIDTH_OPERATORS:
            raise ValueError(f"--width-operator must be one of {', '.join(WIDTH_OPERATORS)}, "
                             f"got {width_operator!r}")
        if keep_optimizer_state:
            raise ValueError("--keep-optimizer-state carries Adam moments through depth growth "
                             "only; drop it when changing widths (a fresh optimizer is used)")
        width = WidthGrowth(depth_model, dst_model, width_operator, seed)
    split = dict(decoder_first_pipeline_num_layers=target_decoder_first_pipeline_num_layers,
                 decoder_last_pipeline_num_layers=target_decoder_last_pipeline_num_layers,
                 account_for_embedding_in_pipeline_split=target_account_for_embedding_in_pipeline_split,
                 account_for_loss_in_pipeline_split=target_account_for_loss_in_pipeline_split,
                 num_virtual_stages_per_pipeline_rank=target_num_virtual_stages_per_pipeline_rank)
    dst_parallel = _target_parallel(src_parallel, dst_model, target_tensor_parallel_size,
                                    target_pipeline_parallel_size,
                                    target_num_layers_per_virtual_pipeline_stage, split)
    layer_map = growth_layer_map(plan.layers, dst_parallel)
    _check_destination(dst, ckpt, force)
    check_output_dir(f"--save {dst}", os.path.dirname(os.path.abspath(dst)))

    def grow_weight(key: str, tensor: torch.Tensor) -> torch.Tensor:
        out = depth.transform(key, tensor)
        return width.transform(key, out) if width is not None else out

    tmp_root = output_dir.new_temp_root(dst)
    out_dir = checkpoint_dir(tmp_root, GROWN_ITERATION)
    try:
        writer = DistCheckpointWriter(out_dir, fsync=fsync)
        _add_tensors(writer, reader, grow_weight, depth, width, keep_optimizer_state)
        _add_objects(writer, reader, src_model.num_layers, plan, keep_optimizer_state)
        grown_common = grown_common_state(
            common, dst_model, dst_parallel, keep_optimizer_state=keep_optimizer_state,
            grown_from=dict(
                checkpoint=os.path.abspath(ckpt), iteration=common.get("iteration"),
                operator=operator, width_operator=width_operator if width else None,
                stacking_list=list(plan.layers), seed=seed, source_model=src_model.to_dict(),
                source_parallel=dataclasses.asdict(src_parallel),
                keep_optimizer_state=keep_optimizer_state,
            ),
        )
        stats = writer.write(grown_common)
        write_latest(tmp_root, GROWN_ITERATION)
        output_dir.publish(tmp_root, dst)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    report = GrowthReport(
        source_checkpoint=ckpt, source_iteration=common.get("iteration"), destination=dst,
        checkpoint_dir=checkpoint_dir(dst, GROWN_ITERATION), source_model=src_model,
        target_model=dst_model, source_parallel=src_parallel, target_parallel=dst_parallel,
        operator=operator, width_operator=width_operator if width else None,
        stacking_list=tuple(plan.layers), layer_map=tuple(layer_map),
        tensors_written=stats.tensors, objects_written=stats.objects,
        bytes_written=stats.tensor_bytes, records_copied=stats.copied_records,
        optimizer_state=("absent" if not _has_optimizer(reader)
                         else "carried" if keep_optimizer_state else "dropped"),
        seconds=time.monotonic() - start,
    )
    logger.info("grew %s -> %s (%d -> %d layers, %s) in %.1f s", ckpt, report.checkpoint_dir,
                src_model.num_layers, dst_model.num_layers, operator, report.seconds)
    return report


# ---- source ------------------------------------------------------------------------------------
def _resolve_source(src: str) -> str:
    if not os.path.exists(src):
        raise ValueError(f"--load {src}: no such checkpoint directory")
    return resolve_checkpoint(src)


def source_model_config(common: dict[str, Any], ckpt: str) -> ModelConfig:
    """The architecture a checkpoint was trained with: megastack's record, else Megatron args."""
    recorded = (common.get("megastack") or {}).get("model")
    if recorded:
        return ModelConfig.from_dict(recorded)
    args = common.get("args")
    if args is None:
        raise ValueError(f"{ckpt}/common.pt records neither a megastack model config nor Megatron "
                         f"args: cannot tell the source architecture")
    try:
        return ModelConfig.from_dict(model_record_from_megatron_args(args))
    except TypeError as e:
        raise ValueError(f"{ckpt}/common.pt: Megatron args lack the model sizes ({e})") from None


def source_parallel_config(common: dict[str, Any]) -> ParallelConfig:
    recorded = (common.get("megastack") or {}).get("parallel")
    if recorded:
        names = {f.name for f in dataclasses.fields(ParallelConfig)}
        return ParallelConfig(**{k: v for k, v in recorded.items() if k in names})
    args = common.get("args")
    return ParallelConfig(
        tensor_model_parallel_size=getattr(args, "tensor_model_parallel_size", 1) or 1,
        pipeline_model_parallel_size=getattr(args, "pipeline_model_parallel_size", 1) or 1,
        num_layers_per_virtual_pipeline_stage=getattr(args, "num_layers_per_virtual_pipeline_stage",
                                                      None),
        sequence_parallel=bool(getattr(args, "sequence_parallel", False)),
        use_distributed_optimizer=bool(getattr(args, "use_distributed_optimizer", False)),
        decoder_first_pipeline_num_layers=getattr(args, "decoder_first_pipeline_num_layers", None),
        decoder_last_pipeline_num_layers=getattr(args, "decoder_last_pipeline_num_layers", None),
        account_for_embedding_in_pipeline_split=bool(
            getattr(args, "account_for_embedding_in_pipeline_split", False)),
        account_for_loss_in_pipeline_split=bool(
            getattr(args, "account_for_loss_in_pipeline_split", False)),
    )


def _check_layer_axis(reader: DistCheckpointReader, model: ModelConfig) -> None:
    for key in reader.tensor_keys():
        if is_layer_key(key) and reader.shape(key)[0] != model.num_layers:
            raise ValueError(f"{reader.path}: {key} has shape {reader.shape(key)} but common.pt "
                             f"says the model has {model.num_layers} layers; the checkpoint is "
                             f"inconsistent")


def _has_optimizer(reader: DistCheckpointReader) -> bool:
    return any(k.startswith(OPTIMIZER_PREFIX) for k in reader.tensor_keys())


# ---- target ------------------------------------------------------------------------------------
def widened_model(depth_model: ModelConfig, hidden: Optional[int], ffn: Optional[int],
                  heads: Optional[int], groups: Optional[int]) -> ModelConfig:
    """`depth_model` at the --target-* widths given (None: kept; multi-head attention stays
    multi-head when only the heads are given)."""
    targets = (("hidden_size", hidden), ("ffn_hidden_size", ffn), ("num_attention_heads", heads),
               ("num_query_groups", groups))
    for name, value in targets:
        if value is not None and value < 1:
            raise ValueError(f"--target-{name.replace('_', '-')} must be >= 1, got {value}")
    changes = {name: value for name, value in targets if value is not None}
    if heads is not None and groups is None and depth_model.num_query_groups == depth_model.num_attention_heads:
        changes["num_query_groups"] = heads  # multi-head attention stays multi-head
    try:
        return depth_model.replace(**changes)
    except ValueError as e:
        raise ValueError(f"invalid target width: {e}") from None


_EVEN_SPLIT = {field.name: field.default for field in dataclasses.fields(ParallelConfig)
               if field.name in PIPELINE_SPLIT_FIELDS}


def _target_parallel(src: ParallelConfig, model: ModelConfig, tp: Optional[int],
                     pp: Optional[int], vp_layers: Optional[int],
                     split: Optional[dict[str, Any]] = None) -> ParallelConfig:
    """The source's layout with the target flags given; an uneven pipeline split only where
    `split` (PIPELINE_SPLIT_FIELDS) asks for one: the source's was for another layer count."""
    split = {**_EVEN_SPLIT, **(split or {})}
    # Uneven stages are interleaved by their own chunk count, if at all.
    own_split = ParallelConfig(**split).uneven_pipeline or \
        split["num_virtual_stages_per_pipeline_rank"] is not None
    inherited = vp_layers is None and pp is None and not own_split and \
        src.num_layers_per_virtual_pipeline_stage is not None
    if inherited:
        vp_layers = src.num_layers_per_virtual_pipeline_stage
    if vp_layers == 0:  # said explicitly: no interleaving
        vp_layers = None
    target = dataclasses.replace(
        src,
        tensor_model_parallel_size=tp if tp is not None else src.tensor_model_parallel_size,
        pipeline_model_parallel_size=pp if pp is not None else src.pipeline_model_parallel_size,
        num_layers_per_virtual_pipeline_stage=vp_layers,
        **split,
    )
    flags = (f"--target-tensor-parallel-size {target.tensor_model_parallel_size} "
             f"--target-pipeline-parallel-size {target.pipeline_model_parallel_size}"
             + (f" --target-num-layers-per-virtual-pipeline-stage {vp_layers}" if vp_layers else "")
             + "".join(f" --target-{name.replace('_', '-')}" + ("" if value is True else f" {value}")
                       for name, value in split.items() if value not in (None, False)))
    try:
        target.validate(model, flag_prefix="target-")
    except ValueError as e:
        hint = (f" (the {vp_layers} layers per virtual stage are the source's: give "
                f"--target-num-layers-per-virtual-pipeline-stage with a divisor of the target's "
                f"layers per pipeline stage, or 0 for no interleaving)" if inherited else "")
        raise ValueError(f"invalid target layout ({flags}) for the {model.num_layers}-layer "
                         f"target: {e}{hint}") from None
    if model.vocab_size % target.tensor_model_parallel_size != 0:
        raise ValueError(f"invalid target layout ({flags}): the vocabulary of {model.vocab_size} "
                         f"rows does not split over {target.tensor_model_parallel_size} "
                         f"tensor-parallel ranks")
    return target


# ---- destination -------------------------------------------------------------------------------
def _check_destination(dst: str, ckpt: str, force: bool) -> None:
    dst_abs = os.path.realpath(dst)
    src_abs = os.path.realpath(ckpt)
    # DST may sit next to the source's iter dirs, but must neither be (or contain) the source
    # checkpoint, nor be its save root (whose latest_checkpointed_iteration.txt it would rewrite).
    if (dst_abs in (src_abs, os.path.dirname(src_abs)) or dst_abs.startswith(src_abs + os.sep)
            or src_abs.startswith(dst_abs + os.sep)):
        raise ValueError(f"--save {dst} overlaps the source checkpoint {ckpt}: choose a "
                         f"separate directory (the source is never modified)")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ValueError(f"--save {dst} exists and is not a directory")
    if os.path.isdir(dst) and os.listdir(dst):
        if not force:
            raise ValueError(f"--save {dst} exists and is not empty: choose a new directory "
                             f"(or pass --force to replace an earlier grown checkpoint there)")
        if not _is_grown_checkpoint(dst):
            raise ValueError(f"--save {dst} holds data that is not a grown checkpoint; --force only "
                             f"replaces earlier output of grow_checkpoint, never other checkpoints")


def _is_grown_checkpoint(root: str) -> bool:
    ckpt = checkpoint_dir(root, GROWN_ITERATION)
    entries = set(os.listdir(root))
    if not entries <= {LATEST_FILE, os.path.basename(ckpt)}:
        return False
    try:
        common = torch.load(os.path.join(ckpt, COMMON_FILE), map_location="cpu",
                            weights_only=False)
    except Exception:  # unreadable or missing: not provably ours
        return False
    return isinstance(common, dict) and "grown_from" in common


# ---- what gets written -------------------------------------------------------------------------
def _add_tensors(
    writer: DistCheckpointWriter,
    reader: DistCheckpointReader,
    grow_weight: Callable[[str, torch.Tensor], torch.Tensor],
    depth: DepthGrowth,
    width: Optional[WidthGrowth],
    keep_optimizer_state: bool,
) -> None:
    """Register every kept tensor with its target shape and a producer of its grown value."""
    for key in reader.tensor_keys():
        if key.startswith(OPTIMIZER_PREFIX):
            if not keep_optimizer_state:
                continue
            match = OPTIMIZER_STATE_KEY.match(key)
            if match is None:
                raise ValueError(f"{reader.path}: optimizer key {key!r} is not in megatron-core's "
                                 f"optimizer.state.<name>.<param> form; drop --keep-optimizer-state")
            model_key, name = match["model_key"], match["name"]
            if name in MASTER_WEIGHT_STATES:
                fn = grow_weight
            else:
                fn = depth.transform_optimizer_state
        else:
            model_key, fn = key, grow_weight
        shape = _target_shape(model_key, reader.shape(key), len(depth.plan), width)
        if is_layer_key(model_key) and depth.operator in ROW_COPY_OPERATORS and width is None:
            # stack and shrink are index_select on the layer axis (for weights and moments alike):
            # copy each layer's stored record where the source has one per whole layer, else let
            # the writer gather source rows instead of materialising the stacked tensor.
            records = reader.layer_records(key)
            writer.add_tensor(key, shape, reader.dtype(key), _producer(reader, key),
                              layer_stacked=True, rows=depth.plan.layers,
                              records=None if records is None else
                              [records[layer] for layer in depth.plan.layers])
        else:
            writer.add_tensor(key, shape, reader.dtype(key),
                              _producer(reader, key, lambda t, k=model_key, f=fn: f(k, t)),
                              layer_stacked=is_layer_key(model_key))


def _producer(reader: DistCheckpointReader, key: str,
              fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Callable[[], torch.Tensor]:
    def produce() -> torch.Tensor:
        tensor = reader.load_tensor(key)
        return fn(tensor) if fn is not None else tensor
    return produce


def _target_shape(model_key: str, shape: tuple[int, ...], target_layers: int,
                  width: Optional[WidthGrowth]) -> tuple[int, ...]:
    if is_layer_key(model_key):
        shape = (target_layers,) + tuple(shape[1:])
    return tuple(shape) if width is None else width.target_shape(model_key, shape)


def _add_objects(writer: DistCheckpointWriter, reader: DistCheckpointReader, source_layers: int,
                 plan: StackingPlan, keep_optimizer_state: bool) -> None:
    """Per-layer objects (``_extra_state``) follow their layer through the plan; RNG state is
    dropped (model and layout changed: the trainer re-seeds); optimizer objects go with the
    optimizer state; anything else is copied."""
    # (base key, offsets and shape past the layer axis) -> {source layer: unique key}
    per_layer: dict[tuple[str, tuple[int, ...], tuple[int, ...]], dict[int, str]] = {}
    for key in reader.object_keys():
        if key.split("/", 1)[0] == RNG_OBJECT_KEY:
            continue
        if key.startswith(OPTIMIZER_PREFIX):
            if keep_optimizer_state:  # e.g. the distributed optimizer's per-DP-rank param_state
                raise ValueError(f"{reader.path}: optimizer object {key!r} is opaque state that "
                                 f"cannot follow the layers; drop --keep-optimizer-state")
            continue
        parsed = _parse_layer_object(key, source_layers)
        if parsed is None:
            writer.add_object(key, _bytes_producer(reader, key))
            continue
        base, layer, rest_offsets, rest_shape = parsed
        per_layer.setdefault((base, rest_offsets, rest_shape), {})[layer] = key
    for (base, rest_offsets, rest_shape), by_layer in per_layer.items():
        missing = sorted(set(plan.layers) - set(by_layer))
        if missing:
            raise ValueError(f"{reader.path}: {base} has no object for source layer(s) {missing}")
        shape = _dotted((len(plan),) + rest_shape)
        for target_layer, source_layer in enumerate(plan.layers):
            writer.add_object(f"{base}/shard_{_dotted((target_layer,) + rest_offsets)}_{shape}",
                              _bytes_producer(reader, by_layer[source_layer]))


def _parse_layer_object(key: str, source_layers: int):
    """(base, layer, other offsets, other shape) for a layer-stacked object key, else None."""
    match = OBJECT_SHARD_KEY.match(key)
    if match is None or not is_layer_key(match["key"]):
        return None
    offsets = tuple(int(x) for x in match["offsets"].split("."))
    shape = tuple(int(x) for x in match["shape"].split("."))
    if len(offsets) != len(shape) or shape[0] != source_layers:
        return None
    return match["key"], offsets[0], offsets[1:], shape[1:]


def _dotted(values: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in values)


def _bytes_producer(reader: DistCheckpointReader, key: str) -> Callable[[], bytes]:
    return lambda: reader.load_object_bytes(key)


# ---- common state ------------------------------------------------------------------------------
def grown_common_state(
    common: dict[str, Any],
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    keep_optimizer_state: bool,
    grown_from: dict[str, Any],
) -> dict[str, Any]:
    """The source's common state, rewritten for the grown model at iteration 0.

    The LR scheduler state and RNG state are dropped (the paper re-warms the LR; the trainer
    re-seeds at the new layout); the optimizer's param groups go with its state.
    """
    out = {k: v for k, v in common.items() if k not in ("opt_param_scheduler", "rng_layout")}
    if not keep_optimizer_state:
        out.pop("optimizer", None)
    out["iteration"] = GROWN_ITERATION
    megastack = dict(common.get("megastack") or {})
    megastack["model"] = model.to_dict()
    megastack["parallel"] = dataclasses.asdict(parallel)
    out["megastack"] = megastack
    out["grown_from"] = grown_from
    if isinstance(common.get("args"), argparse.Namespace):
        out["args"] = grown_args(common["args"], model, parallel)
    return out


def grown_args(args: argparse.Namespace, model: ModelConfig,
               parallel: ParallelConfig) -> argparse.Namespace:
    """Megatron args with the target's sizes and layout; the iteration restarts at 0."""
    new = copy.copy(args)
    for name in _MODEL_ARG_NAMES:
        setattr(new, name, getattr(model, name))
    new.kv_channels = model.head_dim
    new.group_query_attention = model.num_query_groups != model.num_attention_heads
    new.tensor_model_parallel_size = parallel.tensor_model_parallel_size
    new.pipeline_model_parallel_size = parallel.pipeline_model_parallel_size
    new.num_layers_per_virtual_pipeline_stage = parallel.num_layers_per_virtual_pipeline_stage
    new.virtual_pipeline_model_parallel_size = parallel.virtual_pipeline_size(model.num_layers)
    for name in PIPELINE_SPLIT_FIELDS:
        setattr(new, name, getattr(parallel, name))
    if hasattr(new, "iteration"):
        new.iteration = GROWN_ITERATION
    return new
