"""Train a SentencePiece tokenizer (BPE or unigram) from JSON-lines text.

    python tools/train_tokenizer.py --input examples/data/sample.jsonl.gz \\
        --model-prefix out/tok4k --vocab-size 4096 --model-type bpe

Then preprocess with --tokenizer-type SentencePieceTokenizer --tokenizer-model out/tok4k.model.
"""

import argparse
import sys


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="JSON-lines files (plain or .gz) or glob patterns")
    parser.add_argument("--json-keys", nargs="+", default=["text"],
                        help="keys whose text trains the tokenizer")
    parser.add_argument("--model-prefix", required=True,
                        help="output path prefix: writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--input-sentence-size", type=int, default=10_000_000,
                        help="train on a random sample of at most this many lines (lines over "
                             "16 KiB count as several pieces; 0: every line)")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seed of that sample: same input and seed, same model")
    parser.add_argument("--skip-bad-lines", action="store_true")
    parser.add_argument("--workers", type=int, default=None,
                        help="training threads (default: all cores)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    from megastack.data.tokenizer_training import TokenizerTrainingConfig, train_sentencepiece

    config = TokenizerTrainingConfig(
        inputs=args.input, model_prefix=args.model_prefix, vocab_size=args.vocab_size,
        model_type=args.model_type, json_keys=tuple(args.json_keys),
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size, seed=args.seed,
        skip_bad_lines=args.skip_bad_lines, num_threads=args.workers)
    try:
        model = train_sentencepiece(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {model} and {args.model_prefix}.vocab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
