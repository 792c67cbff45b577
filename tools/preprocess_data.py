"""Turn JSON-lines text into Megatron indexed datasets (PREFIX_<key>_document.bin/.idx).

Megatron-LM's flag names; offline (local tokenizer files and punkt_tab only). Example:

    python tools/preprocess_data.py --input 'data/*.jsonl.gz' --output-prefix out/corpus \\
        --tokenizer-type GPT2BPETokenizer --vocab-file gpt2/encoder.json \\
        --merge-file gpt2/vocab.bpe --append-eod --workers 8
"""

import argparse
import sys


def get_args(argv=None) -> argparse.Namespace:
    from megastack.data.tokenizers import add_hf_special_token_flags

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True,
                       help="JSON-lines files (plain or .gz) or glob patterns")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="keys to extract from each JSON object (one dataset per key)")
    group.add_argument("--split-sentences", action="store_true",
                       help="split documents into sentences with NLTK punkt_tab")
    group.add_argument("--keep-newlines", action="store_true",
                       help="keep newlines between sentences when splitting")
    group.add_argument("--nltk-data", default=None,
                       help="directory holding tokenizers/punkt_tab/ (default: $NLTK_DATA)")
    group.add_argument("--lang", default="english", help="punkt_tab language")
    group.add_argument("--skip-bad-lines", action="store_true",
                       help="skip (and count) malformed lines instead of stopping at the first")

    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True,
                       choices=["GPT2BPETokenizer", "SentencePieceTokenizer",
                                "HuggingFaceTokenizer", "NullTokenizer"])
    group.add_argument("--tokenizer-model", default=None,
                       help="SentencePiece .model, or tokenizer.json (or its directory)")
    group.add_argument("--vocab-file", default=None, help="GPT-2 encoder.json")
    group.add_argument("--merge-file", default=None, help="GPT-2 vocab.bpe")
    group.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer vocabulary")
    add_hf_special_token_flags(group)
    group.add_argument("--append-eod", action="store_true",
                       help="append the end-of-document token to every document")

    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True,
                       help="path prefix of the output files, without _<key>_document.bin")

    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="encoding processes")
    # Megatron-LM's flags, accepted so its scripts run unchanged; neither changes the output.
    group.add_argument("--partitions", type=int, default=1,
                       help="accepted for Megatron-LM compatibility; the output is the same for "
                            "any N: megastack streams every input in order and parallelises "
                            "with --workers (Megatron-LM splits the input into N files, "
                            "round-robin unless --keep-sequential-samples, so its document "
                            "order can differ)")
    group.add_argument("--keep-sequential-samples", action="store_true",
                       help="accepted for Megatron-LM compatibility; megastack always keeps the "
                            "input's document order, so this changes nothing")
    group.add_argument("--log-interval", type=int, default=1000,
                       help="print progress every this many documents (0: only the summary)")
    args = parser.parse_args(argv)
    if args.partitions < 1:
        parser.error(f"--partitions must be >= 1, got {args.partitions}")
    duplicates = sorted({k for k in args.json_keys if args.json_keys.count(k) > 1})
    if duplicates:
        # Each key becomes one output dataset; a repeated key would write the same files twice.
        parser.error(f"--json-keys names {', '.join(duplicates)} more than once")
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    # Imported after parsing so --help and argument errors are instant.
    from megastack.data.jsonl_reader import BadInputError
    from megastack.data.preprocessing import PreprocessConfig, preprocess
    from megastack.data.termination import run_tool
    from megastack.data.tokenizers import TokenizerSpec

    config = PreprocessConfig(
        inputs=args.input, output_prefix=args.output_prefix,
        tokenizer=TokenizerSpec(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                                vocab_file=args.vocab_file, merge_file=args.merge_file,
                                vocab_size=args.vocab_size,
                                hf_include_special_tokens=args.hf_include_special_tokens),
        json_keys=tuple(args.json_keys), split_sentences=args.split_sentences,
        keep_newlines=args.keep_newlines, append_eod=args.append_eod, nltk_data=args.nltk_data,
        lang=args.lang, workers=args.workers, log_interval=args.log_interval,
        skip_bad_lines=args.skip_bad_lines)
    status, result = run_tool(
        lambda: preprocess(config, report=lambda line: print(line, file=sys.stderr, flush=True)),
        cleaned_up="incomplete output files were removed",
        error_statuses=((BadInputError, 1), (ValueError, 2)))
    if status == 0:
        for prefix in result.output_prefixes:
            print(f"wrote {prefix}.bin and {prefix}.idx")
    return status


if __name__ == "__main__":
    sys.exit(main())
