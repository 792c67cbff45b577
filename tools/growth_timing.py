"""When to grow: tokens d for the small model before G_stack, from the paper's guideline.

    python tools/growth_timing.py --params 7B --tokens 2T
    python tools/growth_timing.py --params 7e9 --tokens 2e12

log10(d) = 0.88 log10(N) + 163.27 / log10(6 N D) - 5.74, growth factor g = 4 (Du et al., 2024).
"""

import argparse
import sys


def _count(text: str) -> float:
    from megastack.growth.timing import parse_count

    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=_count, required=True,
                        help="N, parameters of the target (grown) model: 7e9, 7B, 410M")
    parser.add_argument("--tokens", type=_count, required=True,
                        help="D, total training tokens of the run: 2e12, 2T, 300B")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = get_args(argv)
    from megastack.growth.timing import format_count, growth_timing

    try:
        timing = growth_timing(args.params, args.tokens)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"target parameters N: {format_count(timing.target_params)}")
    print(f"total tokens D:      {format_count(timing.total_tokens)}")
    print(f"grow after d:        {format_count(timing.growth_tokens)} tokens "
          f"({timing.growth_tokens:.6g})")
    print(f"growth factor g:     {timing.growth_factor}")
    for warning in timing.warnings:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
