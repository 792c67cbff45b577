"""Equal-FLOPs budgets: how long a grown model may train once the small model is charged."""

from __future__ import annotations

import math

from megastack.config import ModelConfig


def large_phase_iters(budget_iters: int, small_iters: int, small: ModelConfig,
                      large: ModelConfig, multiple_of: int = 1) -> int:
    """Iterations left for the large model after `small_iters` of the small one, when the run
    may spend what `budget_iters` of the large model from scratch would (same tokens per
    iteration). Rounded down to a multiple of `multiple_of` (evaluations land on the last
    iteration only when the phase length is a multiple of --eval-interval), so that the grown
    run never spends more than the scratch run; at least one multiple."""
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    ratio = small.flops_per_token() / large.flops_per_token()
    exact = budget_iters - small_iters * ratio
    if exact <= 0:
        raise ValueError(
            f"the small model's {small_iters} iterations already spend the whole budget of "
            f"{budget_iters} large-model iterations (FLOPs ratio {ratio:.3f}): grow earlier or "
            f"raise the budget")
    # The small tolerance keeps a budget that is a whole multiple up to float error whole.
    rounded = multiple_of * math.floor(exact / multiple_of + 1e-9)
    return max(multiple_of, rounded)


def main(argv=None) -> int:
    import argparse
    import sys

    from megastack.experiments.model_spec import parse_model_spec

    p = argparse.ArgumentParser(prog="python -m megastack.experiments.flops_budget",
                                description="Print the large phase's iterations at equal FLOPs.")
    p.add_argument("--budget-iters", type=int, required=True, help="the scratch run's iterations")
    p.add_argument("--small-iters", type=int, required=True)
    p.add_argument("--small-model", required=True, help="preset[+field=value...]")
    p.add_argument("--large-model", required=True, help="preset[+field=value...]")
    p.add_argument("--multiple-of", type=int, default=1)
    args = p.parse_args(argv)
    try:
        print(large_phase_iters(args.budget_iters, args.small_iters, parse_model_spec(args.small_model),
                                parse_model_spec(args.large_model), args.multiple_of))
    except ValueError as e:
        print(f"flops_budget: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
