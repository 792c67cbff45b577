#!/usr/bin/env python
r"""Dry-run planner: validate a layout, print the layer -> pipeline stage map and per-GPU memory.

One training phase:
    python tools/plan.py --model llama2-7b --nnodes 8 --tensor-model-parallel-size 2 \
        --pipeline-model-parallel-size 2 --num-layers-per-virtual-pipeline-stage 4 \
        --sequence-parallel --transformer-impl transformer_engine --use-distributed-optimizer \
        --bf16 --global-batch-size 1024

A G_stack recipe (train --model, grow to --grow-to, train that), all three phases:
    python tools/plan.py --model 8L4096H --grow-to llama2-7b --stacking-list "0-7*4" \
        --nnodes 8 --bf16 --global-batch-size 1024 \
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 2 \
        --small-train-tokens 20B --train-tokens 300B

Needs no GPU and no torch.distributed. Exits 2 on a layout megatron-core would reject; a phase
that will not fit the GPU prints a warning with the settings that would make it fit.
"""

from __future__ import annotations

import argparse
import logging
import sys

from megastack.config import ModelConfig, ParallelConfig
from megastack.growth.plans import parse_stacking_list
from megastack.planning import (
    GIB, PhaseLayout, format_growth, format_phase, plan_growth, plan_phase,
)
from megastack.planning.activations import DEFAULT_RECOMPUTE_MODULES, RECOMPUTE_MODULES
from megastack.training.arguments import (
    add_model_args,
    add_parallel_args,
    add_target_pipeline_split_args,
    model_config_from_args,
    padded_vocab_size,
    token_count,
)


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    # The model and layout flags are the trainer's own, so a plan and a run take the same line.
    add_model_args(parser)
    add_parallel_args(parser)
    # The memory model only knows flash attention for Transformer Engine: estimate the local
    # spec unless asked (the trainer's "auto" depends on what the GPU machine has installed).
    parser.set_defaults(transformer_impl="local")
    group = parser.add_argument_group("vocabulary")
    group.add_argument("--vocab-size", type=int,
                       help="tokenizer vocabulary, padded as the trainer pads it; applies to the "
                            "grown model too (as does --seq-length)")

    group = parser.add_argument_group("launch")
    group.add_argument("--nnodes", type=int, default=1)
    group.add_argument("--nproc-per-node", type=int, default=8)

    group = parser.add_argument_group("batch and precision")
    group.add_argument("--micro-batch-size", type=int, default=1)
    group.add_argument("--global-batch-size", type=int,
                       help="default: micro-batch size x data-parallel size")
    precision = group.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true")
    precision.add_argument("--fp16", action="store_true",
                           help="the same bytes as --bf16 (16-bit weights and activations)")
    group.add_argument("--recompute-granularity", choices=["selective", "full"])
    group.add_argument("--recompute-modules", nargs="+", choices=list(RECOMPUTE_MODULES),
                       help="what selective recomputation recomputes, in both phases (default "
                            "megatron-core's: core_attn)")

    group = parser.add_argument_group("growth (plans train -> grow -> train)")
    group.add_argument("--grow-to", metavar="PRESET", help="the grown model's preset")
    group.add_argument("--stacking-list", help="shown in the plan; tools/grow_checkpoint.py applies it")
    group.add_argument("--target-tensor-parallel-size", type=int, help="default: the small phase's")
    group.add_argument("--target-pipeline-parallel-size", type=int, help="default: the small phase's")
    group.add_argument("--target-num-layers-per-virtual-pipeline-stage", type=int,
                       help="default: no interleaving")
    add_target_pipeline_split_args(group, "--account-for-*-in-pipeline-split apply to both phases")
    group.add_argument("--target-micro-batch-size", type=int, help="default: the small phase's")
    group.add_argument("--target-global-batch-size", type=int, help="default: the small phase's")
    group.add_argument("--target-recompute-granularity", choices=["none", "selective", "full"],
                       help="default: the small phase's")
    group.add_argument("--small-train-tokens", type=token_count,
                       help="tokens before growth (e.g. 20e9 or 20B), for the summary")
    group.add_argument("--train-tokens", type=token_count,
                       help="total token budget (e.g. 300B), for the summary")

    group = parser.add_argument_group("device")
    group.add_argument("--gpu-memory-gib", type=float, default=80.0)
    group.add_argument("--reserve-gib", type=float, default=2.0,
                       help="CUDA context, NCCL buffers and fragmentation, added to every GPU")
    return parser.parse_args(argv)


def shared_overrides(args, tensor_parallel_size: int) -> dict:
    """--vocab-size (padded for this phase's TP like the trainer does) and --seq-length."""
    vocab = args.vocab_size
    if vocab is not None:
        vocab = padded_vocab_size(vocab, args.make_vocab_size_divisible_by, tensor_parallel_size)
    return {k: v for k, v in {"vocab_size": vocab, "seq_length": args.seq_length}.items() if v is not None}


def check_flags(args) -> None:
    """Raise ValueError naming the flag for sizes that must be positive (before any division)."""
    positive = {
        "--nnodes": args.nnodes,
        "--nproc-per-node": args.nproc_per_node,
        "--tensor-model-parallel-size": args.tensor_model_parallel_size,
        "--pipeline-model-parallel-size": args.pipeline_model_parallel_size,
        "--num-layers-per-virtual-pipeline-stage": args.num_layers_per_virtual_pipeline_stage,
        "--micro-batch-size": args.micro_batch_size,
        "--global-batch-size": args.global_batch_size,
        "--vocab-size": args.vocab_size,
        "--seq-length": args.seq_length,
        "--target-tensor-parallel-size": args.target_tensor_parallel_size,
        "--target-pipeline-parallel-size": args.target_pipeline_parallel_size,
        "--target-num-layers-per-virtual-pipeline-stage": args.target_num_layers_per_virtual_pipeline_stage,
        "--num-virtual-stages-per-pipeline-rank": args.num_virtual_stages_per_pipeline_rank,
        "--target-num-virtual-stages-per-pipeline-rank":
            args.target_num_virtual_stages_per_pipeline_rank,
        "--target-micro-batch-size": args.target_micro_batch_size,
        "--target-global-batch-size": args.target_global_batch_size,
    }
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.small_train_tokens is not None and args.train_tokens is None:
        raise ValueError("--small-train-tokens needs --train-tokens (the whole budget) for the "
                         "token summary")
    if (args.small_train_tokens is not None and args.train_tokens is not None
            and args.small_train_tokens >= args.train_tokens):
        raise ValueError(f"--small-train-tokens {args.small_train_tokens:g} leaves nothing of "
                         f"--train-tokens {args.train_tokens:g} for the grown model: it must be "
                         f"smaller")
    if not args.gpu_memory_gib > 0:
        raise ValueError(f"--gpu-memory-gib must be > 0, got {args.gpu_memory_gib}")
    if not args.reserve_gib >= 0:
        raise ValueError(f"--reserve-gib must be >= 0, got {args.reserve_gib}")


def check_sequence_parallel_impl(args, tp: int, tp_flag: str) -> None:
    """The trainer refuses --sequence-parallel with TP > 1 unless the layers are Transformer
    Engine's. "auto" resolves on the GPU machine, so the planner cannot tell and lets it pass."""
    if not args.sequence_parallel or tp <= 1 or args.transformer_impl == "auto":
        return
    from megastack.layer_impl import check_sequence_parallel

    check_sequence_parallel(args.transformer_impl, tp, True, tp_flag=tp_flag)


def default(value, fallback):
    return value if value is not None else fallback


def phase_layout(args, model, *, tp, pp, vpp, mbs, gbs, recompute, first=None,
                 last=None, chunks=None) -> PhaseLayout:
    world = args.nnodes * args.nproc_per_node
    parallel = ParallelConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        num_layers_per_virtual_pipeline_stage=vpp, num_virtual_stages_per_pipeline_rank=chunks,
        decoder_first_pipeline_num_layers=first, decoder_last_pipeline_num_layers=last,
        account_for_embedding_in_pipeline_split=args.account_for_embedding_in_pipeline_split,
        account_for_loss_in_pipeline_split=args.account_for_loss_in_pipeline_split,
        # One switch for both phases of a recipe: it only means something where TP > 1.
        sequence_parallel=args.sequence_parallel and tp > 1,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    dp = max(world // (tp * pp), 1)
    return PhaseLayout(
        model=model, parallel=parallel, world_size=world, micro_batch_size=mbs,
        global_batch_size=gbs if gbs is not None else mbs * dp, bf16=args.bf16,
        fp16=args.fp16, recompute_granularity=recompute, transformer_impl=args.transformer_impl,
        recompute_modules=tuple(args.recompute_modules or DEFAULT_RECOMPUTE_MODULES),
    )


def main(argv=None) -> int:
    args = get_args(argv)
    # The report prints the plan's warnings; the library's log records of them would repeat it.
    logging.getLogger("megastack.planning").setLevel(logging.ERROR)
    options = dict(device_memory_bytes=args.gpu_memory_gib * GIB, reserve_bytes=args.reserve_gib * GIB)
    try:
        check_flags(args)
        check_sequence_parallel_impl(args, args.tensor_model_parallel_size, "--tensor-model-parallel-size")
        small = phase_layout(
            args, model_config_from_args(args, args.vocab_size),
            tp=args.tensor_model_parallel_size, pp=args.pipeline_model_parallel_size,
            vpp=args.num_layers_per_virtual_pipeline_stage, mbs=args.micro_batch_size,
            gbs=args.global_batch_size, recompute=args.recompute_granularity,
            first=args.decoder_first_pipeline_num_layers,
            last=args.decoder_last_pipeline_num_layers,
            chunks=args.num_virtual_stages_per_pipeline_rank,
        )
        if args.grow_to is None:
            print(format_phase(plan_phase("train", small, **options)))
            return 0
        target_recompute = default(args.target_recompute_granularity, args.recompute_granularity)
        target_tp = default(args.target_tensor_parallel_size, args.tensor_model_parallel_size)
        check_sequence_parallel_impl(args, target_tp, "--target-tensor-parallel-size")
        large = phase_layout(
            args, ModelConfig.from_name(args.grow_to, **shared_overrides(args, target_tp)),
            tp=target_tp,
            pp=default(args.target_pipeline_parallel_size, args.pipeline_model_parallel_size),
            vpp=args.target_num_layers_per_virtual_pipeline_stage,
            mbs=default(args.target_micro_batch_size, args.micro_batch_size),
            gbs=default(args.target_global_batch_size, small.global_batch_size),
            recompute=None if target_recompute == "none" else target_recompute,
            first=args.target_decoder_first_pipeline_num_layers,
            last=args.target_decoder_last_pipeline_num_layers,
            chunks=args.target_num_virtual_stages_per_pipeline_rank,
        )
        beyond_depth = small.model.replace(num_layers=large.model.num_layers).weight_differences(
            large.model)
        if beyond_depth:
            raise ValueError(
                f"--grow-to {args.grow_to} differs from the small model beyond depth (small vs "
                f"grown: {'; '.join(beyond_depth)}): the planner plans depth growth, the recipes' "
                f"G_stack; pick a preset of the small model's width, or grow width with "
                f"tools/grow_checkpoint.py --target-hidden-size ... and plan each phase alone")
        if args.stacking_list is not None:
            parse_stacking_list(args.stacking_list).validate(small.model.num_layers,
                                                             large.model.num_layers)
        plan = plan_growth(small, large, **options)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_growth(plan, args.stacking_list, args.small_train_tokens, args.train_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
