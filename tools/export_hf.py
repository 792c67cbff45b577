"""Export a megastack checkpoint as a Hugging Face Llama model directory.

    python tools/export_hf.py --load runs/large --output hf/large --dtype bf16 \\
        --tokenizer-dir tokenizers/llama

Writes config.json and safetensors shards that transformers' LlamaForCausalLM.from_pretrained
(Qwen2ForCausalLM's for a model with --add-qkv-bias, Qwen3ForCausalLM's with --qk-layernorm)
loads, e.g. to evaluate a grown model with HF tooling. Reads the checkpoint (any TP/PP layout) layer by layer without building a model
(memory: one layer's weights and the embedding, plus one shard); the optimizer state is left
out.
"""

from __future__ import annotations

import argparse
import logging
import sys


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", required=True,
                        help="checkpoint: a save root (its latest iteration) or an iter_XXXXXXX "
                             "directory")
    parser.add_argument("--ckpt-step", type=int, help="export this iteration of the --load root")
    parser.add_argument("--output", required=True,
                        help="the HF model directory to write (must not exist or be empty)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--max-shard-size-gb", type=float, default=5.0,
                        help="size of each safetensors file (default 5)")
    parser.add_argument("--tokenizer-dir",
                        help="copy the HF tokenizer files of this directory (tokenizer.json, "
                             "tokenizer.model, ...) next to the weights")
    parser.add_argument("--bos-token-id", type=int, help="written to config.json")
    parser.add_argument("--eos-token-id", type=int, help="written to config.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from megastack.checkpoint.hf_convert import export_hf
    from megastack.data.termination import run_tool

    if args.max_shard_size_gb <= 0:
        print(f"error: --max-shard-size-gb must be > 0, got {args.max_shard_size_gb}",
              file=sys.stderr)
        return 2
    status, report = run_tool(
        lambda: export_hf(args.load, args.output, dtype=args.dtype, ckpt_step=args.ckpt_step,
                          max_shard_bytes=int(args.max_shard_size_gb * 2**30),
                          tokenizer_dir=args.tokenizer_dir,
                          bos_token_id=args.bos_token_id, eos_token_id=args.eos_token_id),
        cleaned_up="the partial export was removed")
    if status == 0:
        print(report.summary())
    return status


if __name__ == "__main__":
    sys.exit(main())
