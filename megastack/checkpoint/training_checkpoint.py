"""Save and load training checkpoints in Megatron-LM's layout, atomically.

    SAVE/iter_0000100/          torch_dist shards (__R_N.distcp, .metadata), common.pt, metadata.json
    SAVE/latest_checkpointed_iteration.txt

Every rank writes its shards into ``iter_XXXXXXX.tmp``; once all are done, rank 0 renames it to
``iter_XXXXXXX`` and only then rewrites ``latest_checkpointed_iteration.txt`` (temp file, then
rename). A crash at any point leaves the previous checkpoint and the ``latest`` file intact.
With an async queue (--async-save) the tensors are written by a background process per rank
while training goes on, and the rename and ``latest`` update wait for the queue's finalisation.
Model tensors are saved through megatron-core's ``sharded_state_dict`` so a checkpoint saved at
one TP/PP/VP layout loads at any other; the distributed optimizer uses the fully reshardable
format for the same reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

LATEST_FILE = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0
_OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


RELEASE = "release"  # Megatron-LM's latest-file entry for a checkpoint kept in ROOT/release


def read_latest_iteration(root: str) -> Optional[int | str]:
    """The iteration named by ROOT/latest_checkpointed_iteration.txt ("release" for a Megatron-LM
    release checkpoint), or None when absent."""
    path = os.path.join(root, LATEST_FILE)
    if not os.path.exists(path):
        return None
    text = open(path).read().strip()
    if text == RELEASE:
        return RELEASE
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}: expected an iteration number or {RELEASE!r}, found {text!r}") \
            from None


def has_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint directory or a save root with a latest file. A missing or
    empty directory, or one without either, is a first launch of `--save D --load D`."""
    return (os.path.exists(os.path.join(path, "metadata.json"))
            or os.path.exists(os.path.join(path, LATEST_FILE)))


def resolve_checkpoint(path: str) -> str:
    """Accept a save root (uses its latest file) or a checkpoint directory (iter_XXXXXXX or
    Megatron-LM's release)."""
    if os.path.exists(os.path.join(path, "metadata.json")):
        return path
    iteration = read_latest_iteration(path)
    if iteration is None:
        raise ValueError(
            f"--load {path}: neither a checkpoint directory (no metadata.json) nor a save root "
            f"(no {LATEST_FILE}); point it at the --save directory of an earlier run"
        )
    ckpt = os.path.join(path, RELEASE) if iteration == RELEASE else checkpoint_dir(path, iteration)
    if not os.path.exists(os.path.join(ckpt, "metadata.json")):
        raise ValueError(f"{os.path.join(path, LATEST_FILE)} names iteration {iteration} but "
                         f"{ckpt} is missing or incomplete")
    return ckpt


# Megatron-LM's saved args -> ModelConfig fields, for a checkpoint without megastack's record:
# the same names, but for the vocabulary, which Megatron-LM saves padded under another name.
_MEGATRON_MODEL_ARGS = {
    **{name: name for name in (
        "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "kv_channels",
        "seq_length", "max_position_embeddings", "position_embedding_type", "rotary_base",
        "normalization", "norm_epsilon", "swiglu", "add_bias_linear", "add_qkv_bias",
        "qk_layernorm", "init_method_std", "embedding_init_method_std",
        "untie_embeddings_and_output_weights", "attention_dropout", "hidden_dropout",
        "rope_scaling_factor")},
    "padded_vocab_size": "vocab_size",
    "use_rope_scaling": "rope_scaling",
}


def model_record_from_megatron_args(args: argparse.Namespace) -> dict[str, Any]:
    """ModelConfig fields from the args a Megatron-LM checkpoint saved."""
    record = {field: getattr(args, name) for name, field in _MEGATRON_MODEL_ARGS.items()
              if getattr(args, name, None) is not None}
    if getattr(args, "group_query_attention", False):
        record["num_query_groups"] = args.num_query_groups
    heads, hidden = record.get("num_attention_heads"), record.get("hidden_size")
    if heads and hidden and record.get("kv_channels") == hidden // heads:
        del record["kv_channels"]  # Megatron-LM saves its default too: megastack's None
    return record


def _saved_flags(path: str, what: str, record_key: str) -> tuple[Optional[dict], Any]:
    """(megastack's `record_key` record, Megatron-LM's saved args) of the checkpoint at `path`
    (a checkpoint directory or a save root); ValueError naming `what` when it holds neither."""
    from megatron.core import dist_checkpointing

    if not has_checkpoint(path):
        raise ValueError(f"--load {path}: no checkpoint there (no metadata.json, no "
                         f"{LATEST_FILE}) to take the {what} from")
    found = resolve_checkpoint(path)
    common = dist_checkpointing.load_common_state_dict(found)
    record = (common.get("megastack") or {}).get(record_key)
    args = common.get("args")
    if not record and args is None:
        raise ValueError(f"--load {path}: {found} records no {what} (neither megastack's "
                         f"record nor Megatron-LM's args); give them on the command line")
    return record, args


def read_model_record(path: str) -> dict[str, Any]:
    """The architecture a checkpoint was saved with, as ModelConfig fields: megastack's record,
    or what Megatron-LM's saved args say. `path` is a checkpoint directory or a save root."""
    record, args = _saved_flags(path, "model flags", "model")
    return dict(record) if record else model_record_from_megatron_args(args)


def read_parallel_record(path: str) -> dict[str, Any]:
    """The tensor- and pipeline-parallel layout a checkpoint was saved with (Megatron-LM's
    --use-mp-args-from-checkpoint-args): tensor_model_parallel_size,
    pipeline_model_parallel_size, num_layers_per_virtual_pipeline_stage (None: not
    interleaved) and the uneven stages' flags, from megastack's record or Megatron-LM's saved
    args."""
    record, args = _saved_flags(path, "parallel layout", "parallel")
    source = record if record else vars(args)
    tp = source.get("tensor_model_parallel_size") or 1
    pp = source.get("pipeline_model_parallel_size") or 1
    split = {"decoder_first_pipeline_num_layers": source.get("decoder_first_pipeline_num_layers"),
             "decoder_last_pipeline_num_layers": source.get("decoder_last_pipeline_num_layers"),
             "account_for_embedding_in_pipeline_split":
                 bool(source.get("account_for_embedding_in_pipeline_split")),
             "account_for_loss_in_pipeline_split":
                 bool(source.get("account_for_loss_in_pipeline_split"))}
    per_stage = source.get("num_layers_per_virtual_pipeline_stage")
    # Megatron-LM saves the chunk count too; uneven stages keep it (their chunks differ).
    chunks = source.get("num_virtual_stages_per_pipeline_rank") or \
        source.get("virtual_pipeline_model_parallel_size")
    uneven = any(split.values())
    if per_stage is None and chunks and source.get("num_layers") and not uneven:
        per_stage = source["num_layers"] // pp // chunks
    return {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
            "num_layers_per_virtual_pipeline_stage": per_stage, **split,
            "num_virtual_stages_per_pipeline_rank": chunks if uneven else None}


def _model_state(chunks: list[torch.nn.Module]) -> dict[str, Any]:
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


def _rng_state(layout: tuple[int, int, int], coords: tuple[int, int, int]):
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
    return ShardedObject("rng_state", state, layout, coords, replica_id=0)


def _layout_coords():
    from megatron.core import parallel_state as ps

    layout = (ps.get_pipeline_model_parallel_world_size(),
              ps.get_tensor_model_parallel_world_size(), ps.get_data_parallel_world_size())
    coords = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
              ps.get_data_parallel_rank())
    return layout, coords


def save_checkpoint(
    root: str,
    iteration: int,
    chunks: list[torch.nn.Module],
    optimizer=None,
    scheduler=None,
    common: Optional[dict[str, Any]] = None,
    args: Optional[argparse.Namespace] = None,
    fully_parallel: bool = True,
    assume_constant_structure: bool = False,
    save_rng: bool = True,
    async_queue=None,
    on_saved: Optional[Callable[[], None]] = None,
) -> str:
    """Collectively save a checkpoint; returns the final directory.

    `fully_parallel` (Megatron-LM's --ckpt-fully-parallel-save): the data-parallel replicas
    split the writing of the tensors they all hold, instead of the first replica writing them
    all; `assume_constant_structure` reuses that split for every later save.

    `async_queue` (megatron-core's AsyncCallsQueue, --async-save): schedule the writing and
    return; the checkpoint is published (and `on_saved` called) when the queue finalises it.
    Without a queue `on_saved` is called before returning."""
    from megatron.core import dist_checkpointing

    final = checkpoint_dir(root, iteration)
    tmp = final + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a crashed save
        os.makedirs(tmp)
    dist.barrier()

    state: dict[str, Any] = _model_state(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(
            _merged(dict(state)), is_loading=False, metadata=_OPTIM_METADATA
        )
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    if save_rng:
        layout, coords = _layout_coords()
        state["rng_state"] = _rng_state(layout, coords)
        state["rng_layout"] = list(layout)
    state["iteration"] = iteration
    state["checkpoint_version"] = CHECKPOINT_VERSION
    if args is not None:
        state["args"] = args
    state.update(common or {})

    def publish():
        dist.barrier()  # every rank's shards and the metadata are written
        if rank == 0:
            _publish(root, tmp, final, iteration)
        dist.barrier()
        logger.info("saved checkpoint %s", final)
        if on_saved is not None:
            on_saved()

    request = dist_checkpointing.save(
        state, tmp, validate_access_integrity=True,
        sharded_strategy=_save_strategy(fully_parallel, assume_constant_structure),
        async_sharded_save=async_queue is not None)
    if async_queue is None:
        publish()
    else:
        # The writer process is forked when scheduled, so it writes the tensors as they are now
        # even where (on CPU) megatron-core's staging to host memory copies nothing.
        request.add_finalize_fn(publish)
        async_queue.schedule_async_request(request)
    return final


# One wrapper per run with --ckpt-assume-constant-structure: it caches the split it computed.
_cached_save_strategy: Optional[Any] = None


def _save_strategy(fully_parallel: bool, assume_constant_structure: bool):
    """megatron-core's torch_dist save strategy, wrapped to split the work over the
    data-parallel replicas (as Megatron-LM does); None: megatron-core's default."""
    global _cached_save_strategy
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelSaveStrategyWrapper,
    )

    group = _replica_group(fully_parallel)
    if group is None:
        return None
    if assume_constant_structure and _cached_save_strategy is not None:
        return _cached_save_strategy
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), group,
                                                assume_constant_structure)
    if assume_constant_structure:
        _cached_save_strategy = strategy
    return strategy


def _load_strategy(ckpt: str, fully_parallel: bool):
    """With `fully_parallel` (--ckpt-fully-parallel-load) the data-parallel replicas each read
    part of what they all need and exchange it; None: every rank reads its own."""
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
    )

    group = _replica_group(fully_parallel)
    if group is None:
        return None
    return FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(ckpt), group)


def _replica_group(fully_parallel: bool):
    """The data-parallel group that shares a fully parallel save or load; None when there is
    nothing to share (turned off, or one replica)."""
    from megatron.core import parallel_state

    if not fully_parallel or parallel_state.get_data_parallel_world_size() == 1:
        return None
    return parallel_state.get_data_parallel_group(with_context_parallel=True)


def _merged(model_sd: dict[str, Any]) -> dict[str, Any]:
    """The optimizer maps parameters to sharded tensors through one flat dict of model state."""
    if len(model_sd) == 1:
        return next(iter(model_sd.values()))
    merged: dict[str, Any] = {}
    for i, sd in enumerate(model_sd.values()):
        merged.update({f"{i}.{k}": v for k, v in sd.items()})
    return merged


def _publish(root: str, tmp: str, final: str, iteration: int) -> None:
    if os.path.exists(final):  # re-saving the same iteration: keep the old one until replaced
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    write_latest(root, iteration)


def remove_checkpoints_before(root: str, iteration: int, retain_interval: int = 0) -> None:
    """Delete `root`'s published checkpoints older than `iteration`, except those at multiples
    of `retain_interval` when given (--save-retain-interval; without it the directory keeps only
    its latest, as --non-persistent-save-interval's). Saves in flight (.tmp) are left alone."""
    for name in os.listdir(root):
        match = re.fullmatch(r"iter_(\d{7})", name)
        if not match or int(match.group(1)) >= iteration:
            continue
        if retain_interval and int(match.group(1)) % retain_interval == 0:
            continue
        shutil.rmtree(os.path.join(root, name))


def write_latest(root: str, iteration: int) -> None:
    """Point `root`'s latest_checkpointed_iteration.txt at `iteration`, atomically."""
    latest_tmp = os.path.join(root, LATEST_FILE + ".tmp")
    with open(latest_tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, os.path.join(root, LATEST_FILE))


def _materialize_optimizer_state(optimizer) -> None:
    """Give every parameter an (empty) optimizer state before loading into it.

    Without Apex or Transformer Engine, megatron-core's optimizers use torch.optim.Adam (or SGD),
    whose state (and Adam's 'step') only exists after a first step, and the distributed
    optimizer's `state_dict()` asserts on it. The optimizer's init_state_fn creates the moments
    (megatron-core's for Adam, megastack's for SGD's momentum); 'step' 0 on top is exactly a
    fresh Adam.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None or getattr(opt, "init_state_fn", None) is None:
            continue  # an optimizer without state to create
        opt.init_state_fn(torch_opt, opt.config)
        for state in torch_opt.state.values():
            if "exp_avg" in state:
                state.setdefault("step", torch.tensor(0.0))


def load_checkpoint(
    path: str,
    chunks: list[torch.nn.Module],
    optimizer=None,
    scheduler=None,
    load_rng: bool = True,
    check_scheduler: Optional[Callable[[dict[str, Any]], None]] = None,
    check_common: Optional[Callable[[dict[str, Any]], None]] = None,
    fully_parallel: bool = False,
) -> dict[str, Any]:
    """Collectively load model (and optionally optimizer, scheduler, RNG) state.

    `check_common` sees the checkpoint's common state, and `check_scheduler` its scheduler state
    (only when the scheduler is to be loaded), before anything is loaded; either may raise to
    refuse the checkpoint.

    A checkpoint saved without optimizer state (e.g. grown without --keep-optimizer-state)
    leaves the given optimizer and scheduler fresh, where Megatron-LM would need
    --no-load-optim. Returns the checkpoint's common state (iteration, consumed samples, ...).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    ckpt = resolve_checkpoint(path)
    common = dist_checkpointing.load_common_state_dict(ckpt)
    if check_common is not None:
        check_common(common)
    if optimizer is not None and "optimizer" not in common:
        logger.info("%s holds no optimizer state: starting a fresh optimizer and LR schedule", ckpt)
        optimizer = scheduler = None
    if scheduler is not None and check_scheduler is not None and "opt_param_scheduler" in common:
        check_scheduler(common["opt_param_scheduler"])
    state: dict[str, Any] = _model_state(chunks)
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            _merged(dict(state)), is_loading=True, metadata=_OPTIM_METADATA
        )
    layout, coords = _layout_coords()
    same_layout = list(layout) == list(common.get("rng_layout", []))
    if load_rng and same_layout:
        state["rng_state"] = _rng_state(layout, coords)
    elif load_rng and "rng_layout" not in common:
        logger.info("%s holds no RNG state (e.g. a grown checkpoint): the RNG is seeded from --seed",
                    ckpt)
    elif load_rng:
        logger.info("layout changed from %s to %s: RNG state is re-seeded, not restored",
                    common.get("rng_layout"), list(layout))
    loaded = dist_checkpointing.load(state, ckpt,
                                     sharded_strategy=_load_strategy(ckpt, fully_parallel))
    if len(chunks) == 1:
        chunks[0].load_state_dict(loaded["model"], strict=True)
    else:
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{i}"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in loaded:
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if "rng_state" in state:
        rng = loaded["rng_state"]
        torch.set_rng_state(rng["torch_rng_state"])
        if torch.cuda.is_available() and "cuda_rng_state" in rng:
            torch.cuda.set_rng_state(rng["cuda_rng_state"])
        get_cuda_rng_tracker().set_states(rng["cuda_rng_tracker"])
    logger.info("loaded checkpoint %s", ckpt)
    return common
