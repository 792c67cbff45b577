"""Import a Hugging Face Llama model directory (or Qwen2, Qwen3, Mistral) as a megastack
checkpoint.

    python tools/import_hf.py --hf-dir hf/small-llama --save runs/imported
    python tools/grow_checkpoint.py --load runs/imported --save runs/grown --stacking-list 0-5*4

Writes SAVE/iter_0000000 (weights only, any TP/PP layout loads it): grow it with
tools/grow_checkpoint.py, or train from it with --load SAVE --finetune. Reads config.json and
the safetensors weights (local files only), one layer at a time: memory for a layer's weights
and the embedding, not the model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-dir", required=True,
                        help="directory with config.json and model*.safetensors")
    parser.add_argument("--save", required=True,
                        help="the save root to write (must not exist or be empty)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="the checkpoint's weights (training keeps fp32 main weights)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="pad the vocabulary with zero rows to a multiple of this (as "
                             "megastack pads a tokenizer's; default 128)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # megatron-core's notes on missing Transformer Engine/Apex and deprecated defaults are
    # about training speed, not about this conversion.
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron")
    from megastack.checkpoint.hf_convert import import_hf
    from megastack.data.termination import run_tool

    if args.make_vocab_size_divisible_by < 1:
        print("error: --make-vocab-size-divisible-by must be >= 1", file=sys.stderr)
        return 2
    status, report = run_tool(
        lambda: import_hf(args.hf_dir, args.save, dtype=args.dtype,
                          make_vocab_size_divisible_by=args.make_vocab_size_divisible_by),
        cleaned_up="the partial checkpoint was removed")
    if status == 0:
        print(report.summary())
    return status


if __name__ == "__main__":
    sys.exit(main())
