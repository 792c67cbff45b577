"""Grow a Megatron torch_dist checkpoint offline and re-shard it for a target layout.

    python tools/grow_checkpoint.py --load runs/small --save runs/grown \\
        --stacking-list 0-5*4 --operator stack \\
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 4

Reads SRC (any TP/PP layout) without building a model, streams every tensor through the growth
operator and writes DST/iter_0000000, which training at the target layout loads directly.
Prints the map target layer -> source layer -> pipeline stage (chunk) and a summary.
"""

from __future__ import annotations

import argparse
import logging
import sys

from megastack.growth.depth import DEPTH_OPERATORS
from megastack.growth.width import WIDTH_OPERATORS
from megastack.training.arguments import add_target_pipeline_split_args


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    io = parser.add_argument_group("checkpoints")
    io.add_argument("--load", required=True, help="source checkpoint: a save root or an iter_XXXXXXX directory")
    io.add_argument("--save", required=True, help="destination save root (must not exist or be empty)")
    io.add_argument("--force", action="store_true",
                    help="replace an earlier grown checkpoint at --save (never other data)")
    io.add_argument("--no-fsync", action="store_true", help="skip fsync of the written files")

    growth = parser.add_argument_group("growth")
    growth.add_argument("--stacking-list", required=True,
                        help="source layer of each target layer, 0-based: '0,1,2,0,1,2', '0-5*4', "
                             "'0,1,(2-5)*5,4,5', or the paper's 1-based 'paper:12-3456*5-56'")
    growth.add_argument("--target-num-layers", type=int,
                        help="expected target depth; checked against the stacking list's length")
    # Also under megastack.pretrain's names for growth in one run, so either spelling works.
    growth.add_argument("--operator", "--growth-operator", dest="operator",
                        choices=DEPTH_OPERATORS, default="stack",
                        help="depth operator: stack (G_stack), zero (G_zero), random (G_random), "
                             "shrink (Inheritune)")
    growth.add_argument("--keep-optimizer-state", action="store_true",
                        help="carry the optimizer state (regular or distributed optimizer, as "
                             "megastack saves it): main params grow like weights, Adam moments "
                             "follow the depth operator (default: drop it; training then starts "
                             "a fresh optimizer)")
    growth.add_argument("--seed", type=int, default=1234, help="seed of random/new parts")

    width = parser.add_argument_group("width growth (optional)")
    width.add_argument("--target-hidden-size", type=int)
    width.add_argument("--target-ffn-hidden-size", type=int)
    width.add_argument("--target-num-attention-heads", type=int)
    width.add_argument("--target-num-query-groups", type=int)
    width.add_argument("--width-operator", choices=WIDTH_OPERATORS, default="direct")

    layout = parser.add_argument_group("target layout (default: the source's)")
    layout.add_argument("--target-tensor-parallel-size", "--target-tensor-model-parallel-size",
                        dest="target_tensor_parallel_size", type=int)
    layout.add_argument("--target-pipeline-parallel-size",
                        "--target-pipeline-model-parallel-size",
                        dest="target_pipeline_parallel_size", type=int)
    layout.add_argument("--target-num-layers-per-virtual-pipeline-stage", type=int,
                        help="default: the source's when --target-pipeline-parallel-size is not "
                             "given; 0 for no interleaving")
    add_target_pipeline_split_args(layout, "or the --target-account-for-* flags below")
    layout.add_argument("--target-account-for-embedding-in-pipeline-split", action="store_true",
                        help="the first stage holds one layer fewer (the embedding counts as one)")
    layout.add_argument("--target-account-for-loss-in-pipeline-split", action="store_true",
                        help="the last stage holds one layer fewer (the loss counts as one)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from megastack.data.termination import run_tool
    from megastack.config import PIPELINE_SPLIT_FIELDS
    from megastack.growth.grow_checkpoint import grow_checkpoint

    # A scheduler's SIGTERM (job cancelled, time limit) unwinds like Ctrl-C, so the temporary
    # directory is removed instead of left beside --save.
    status, report = run_tool(
        lambda: grow_checkpoint(
            args.load, args.save,
            stacking_list=args.stacking_list,
            operator=args.operator,
            target_num_layers=args.target_num_layers,
            target_tensor_parallel_size=args.target_tensor_parallel_size,
            target_pipeline_parallel_size=args.target_pipeline_parallel_size,
            target_num_layers_per_virtual_pipeline_stage=args.target_num_layers_per_virtual_pipeline_stage,
            **{f"target_{name}": getattr(args, f"target_{name}") for name in PIPELINE_SPLIT_FIELDS},
            keep_optimizer_state=args.keep_optimizer_state,
            target_hidden_size=args.target_hidden_size,
            target_ffn_hidden_size=args.target_ffn_hidden_size,
            target_num_attention_heads=args.target_num_attention_heads,
            target_num_query_groups=args.target_num_query_groups,
            width_operator=args.width_operator,
            seed=args.seed,
            force=args.force,
            fsync=not args.no_fsync,
        ),
        cleaned_up="the partial grown checkpoint was removed")
    if status == 0:
        print(report.format_map())
        print()
        print(report.summary())
    return status


if __name__ == "__main__":
    sys.exit(main())
