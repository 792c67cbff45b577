"""`python -m megastack.pretrain`: GPT pre-training (and growth in one run) on megatron-core.

Launch with torchrun for several ranks, e.g.

    torchrun --nproc-per-node 8 -m megastack.pretrain --model tiny-8l --mock-data \\
        --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 --train-iters 10
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Optional

from megastack.training.arguments import build_pretrain_config, parse_args


def configure_logging(level: Optional[int] = None) -> None:
    """`level` (--logging-level) applies to every rank; by default rank 0 (which reports setup)
    and the last rank (which holds the loss, on the last pipeline stage) log INFO, the others
    WARNING."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if level is None:
        level = logging.INFO if rank in (0, world - 1) else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stdout, force=True,
                        format=f"[%(asctime)s rank{rank}] %(message)s", datefmt="%H:%M:%S")
    for noisy in ("megatron", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")


def build_tokenizer_from_args(args):
    from megastack.data.tokenizers import build_tokenizer

    if args.tokenizer_type is None:
        if not args.mock_data:
            return None  # build_pretrain_config reports the missing --tokenizer-type
        # Mock data still needs eod/pad ids: a NullTokenizer that spans the model vocabulary.
        from megastack.config import PRESETS

        vocab = args.vocab_size or (PRESETS[args.model]["vocab_size"] if args.model else None)
        if vocab is None and args.use_checkpoint_args and args.load:
            from megastack.checkpoint.training_checkpoint import read_model_record

            vocab = read_model_record(args.load).get("vocab_size")
        if vocab is None:
            raise ValueError("--mock-data without a tokenizer needs --vocab-size, --model or "
                             "--use-checkpoint-args")
        return build_tokenizer("NullTokenizer", vocab_size=vocab - 1)
    from megastack.training.arguments import SENTENCEPIECE_ALIASES

    tokenizer_type = args.tokenizer_type
    if tokenizer_type in SENTENCEPIECE_ALIASES:
        tokenizer_type = "SentencePieceTokenizer"
    return build_tokenizer(tokenizer_type, tokenizer_model=args.tokenizer_model,
                           vocab_file=args.vocab_file, merge_file=args.merge_file,
                           vocab_size=args.vocab_size,
                           hf_include_special_tokens=args.tokenizer_hf_include_special_tokens)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    configure_logging(args.logging_level)
    from megastack.runtime import cpu_compat

    cpu_compat.import_megatron_core()  # first, so that no earlier import pays for its JIT
    try:
        tokenizer = build_tokenizer_from_args(args)
        vocab_size = tokenizer.vocab_size if tokenizer is not None else args.vocab_size
        cfg = build_pretrain_config(args, vocab_size)
    except ValueError as e:
        print(f"megastack.pretrain: error: {e}", file=sys.stderr)
        return 2

    from megastack import runtime

    metrics_file = os.environ.get("MEGASTACK_METRICS_FILE")
    try:
        try:
            # Setup's ValueErrors are about the user's input (a --load that holds no
            # checkpoint, a layer implementation that is not installed, ...).
            if cfg.growth is not None:
                from megastack.training.growth_run import GrowthRun

                run = GrowthRun(cfg, args, tokenizer, metrics_file=metrics_file).setup()
            else:
                from megastack.training.trainer import Trainer

                run = Trainer(cfg, args, metrics_file=metrics_file).setup(tokenizer)
        except ValueError as e:
            print(f"megastack.pretrain: error: {e}", file=sys.stderr)
            return 2
        from megastack.training.exit_signal import exit_signal_handler
        from megastack.training.trainer import TrainingDiverged

        try:
            with exit_signal_handler(cfg.checkpoint.exit_signal):
                run.train()
        except TrainingDiverged as e:
            print(f"megastack.pretrain: error: {e}", file=sys.stderr)
            return 1
        if cfg.growth is None:  # a growth run saves and closes each phase itself
            if (cfg.checkpoint.save and not cfg.train.skip_train
                    and run.state.iteration == cfg.train.train_iters
                    and run.last_saved_iteration != run.state.iteration):
                run.save()
            run.close()
    finally:
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
