"""Merge Megatron indexed datasets (.bin/.idx) into one, documents in input order.

    python tools/merge_datasets.py --input out/part_a_text_document out/part_b_text_document \\
        --output-prefix out/all_text_document
    python tools/merge_datasets.py --input out/parts/ --output-prefix out/all_text_document
"""

import argparse
import os
import sys


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="dataset prefixes (PATH for PATH.bin/.idx), or one directory whose "
                             "datasets are merged in name order")
    parser.add_argument("--output-prefix", required=True,
                        help="prefix of the merged dataset (no .bin/.idx)")
    return parser.parse_args(argv)


def os_error_line(err: OSError) -> str:
    """'PATH: reason' for a failed file operation; a failed rename names its destination."""
    path = err.filename2 or err.filename
    return f"{path}: {err.strerror}" if path and err.strerror else str(err)


def main(argv=None) -> int:
    args = get_args(argv)
    from megastack.data.merge import find_prefixes_in_dir, merge_datasets
    from megastack.data.termination import interruption_report, sigterm_raises

    try:
        with sigterm_raises():
            if len(args.input) == 1 and os.path.isdir(args.input[0]):
                prefixes = find_prefixes_in_dir(args.input[0])
            else:
                prefixes = args.input
            merge_datasets(prefixes, args.output_prefix)
    except KeyboardInterrupt as err:
        what, status = interruption_report(err)
        print(f"error: {what}; incomplete output files were removed", file=sys.stderr)
        return status
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # merge_datasets checks the output directory first; what remains is e.g. a full disk,
        # an unreadable input, or a directory where an output file goes. The writer has
        # removed its partial files.
        print(f"error: {os_error_line(err)}", file=sys.stderr)
        return 2
    print(f"merged {len(prefixes)} datasets into {args.output_prefix}.bin/.idx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
