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


def main(argv=None) -> int:
    args = get_args(argv)
    from megastack.data.merge import find_prefixes_in_dir, merge_datasets
    from megastack.data.termination import run_tool

    def merge() -> int:
        if len(args.input) == 1 and os.path.isdir(args.input[0]):
            prefixes = find_prefixes_in_dir(args.input[0])
        else:
            prefixes = args.input
        merge_datasets(prefixes, args.output_prefix)
        return len(prefixes)

    # merge_datasets checks the output directory first; an OSError left is e.g. a full disk,
    # an unreadable input, or a directory where an output file goes. The writer has removed
    # its partial files.
    status, merged = run_tool(merge, cleaned_up="incomplete output files were removed",
                              error_statuses=((ValueError, 2), (OSError, 2)))
    if status == 0:
        print(f"merged {merged} datasets into {args.output_prefix}.bin/.idx")
    return status


if __name__ == "__main__":
    sys.exit(main())
