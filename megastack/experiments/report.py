"""Compare runs against a scratch baseline: results.json, a markdown table and PNG plots.

    python -m megastack.experiments.report --output-dir DIR --baseline scratch \\
        --run 'scratch|scratch 8L|mini-8l128h:scratch.jsonl' \\
        --run 'gstack|G_stack|mini-2l128h:small.jsonl,mini-8l128h:grown.jsonl'

A --run is NAME|LABEL|PHASE[,PHASE...], a PHASE is MODEL:METRICS_FILE, and MODEL is a preset
name optionally followed by +field=value overrides (e.g. mini-8l128h+hidden_size=64). The
phases of a run follow each other on the data stream (see megastack.experiments.curves).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megastack.experiments.curves import Curve, Phase, build_curve
from megastack.experiments.model_spec import parse_model_spec
from megastack.experiments.plots import plot_curves
from megastack.experiments.speedup import paper_speedup, speedup_at_loss

logger = logging.getLogger(__name__)


@dataclass
class RunSpec:
    name: str
    label: str
    phases: list[Phase]
    operator: str = ""
    growth_tokens: int = 0  # tokens the small model trained before growth (0: not grown)


def parse_run_spec(text: str) -> RunSpec:
    parts = text.split("|")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--run {text!r} must be NAME|LABEL|MODEL:METRICS[,MODEL:METRICS...]")
    name, label, phase_text = parts
    phases = []
    for item in phase_text.split(","):
        model, sep, metrics = item.partition(":")
        if not sep:
            raise ValueError(f"--run {name}: phase {item!r} must be MODEL:METRICS_FILE")
        phases.append(Phase(parse_model_spec(model), metrics, model))
    return RunSpec(name, label, phases)


def check_unique_names(runs: Sequence[RunSpec]) -> None:
    """Runs are keyed by NAME in the results: a repeated one would silently replace the other."""
    seen = set()
    for r in runs:
        if r.name in seen:
            raise ValueError(f"--run name {r.name!r} is given more than once: every --run needs "
                             "its own NAME")
        seen.add(r.name)


def _finite(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


def compare(runs: Sequence[RunSpec], baseline: str,
            curves: Optional[dict[str, Curve]] = None) -> dict[str, Any]:
    """Every number of the comparison: curves, totals, final losses and speedups vs baseline.

    `curves` (run name -> curve) saves reading the metrics files again when already built."""
    check_unique_names(runs)
    names = [r.name for r in runs]
    if baseline not in names:
        raise ValueError(f"baseline run {baseline!r} is not among the runs {names}")
    if curves is None:
        curves = {r.name: build_curve(r.label, r.phases) for r in runs}
    base = curves[baseline]
    out: dict[str, Any] = {"baseline": baseline, "runs": {}}
    for r in runs:
        c = curves[r.name]
        entry: dict[str, Any] = {
            "label": r.label, "operator": r.operator, "growth_tokens": r.growth_tokens,
            "phases": [{"label": p.label, "model": p.model.to_dict(), "metrics_file": p.metrics_file,
                        "flops_per_token": p.model.flops_per_token(),
                        "parameters": p.model.num_parameters()} for p in r.phases],
            "total_tokens": c.total_tokens, "total_flops": c.total_flops,
            "flops_vs_baseline": c.total_flops / base.total_flops,
            "final_valid_loss": c.final.loss,
            "final_valid_ppl": math.exp(min(c.final.loss, 50.0)),
            "curve": [{"tokens": p.tokens, "flops": p.flops, "valid_loss": p.loss, "phase": p.phase}
                      for p in c.points],
        }
        if r.name != baseline:
            entry["final_loss_minus_baseline"] = c.final.loss - base.final.loss
            entry["speedup"] = {
                axis: {"at_baseline_final_loss": paper_speedup(base, c, axis).to_dict(),
                       "at_run_final_loss": speedup_at_loss(base, c, c.final.loss, axis).to_dict()}
                for axis in ("flops", "tokens")}
        out["runs"][r.name] = entry
    return out


def _fmt_speedup(d: dict) -> str:
    if d["value"] is None:
        return "n/a"
    sign = {"exact": "", "lower_bound": "≥ ", "upper_bound": "≤ "}[d["kind"]]
    return f"{sign}{d['value'] * 100:+.1f}%"


def markdown_table(results: dict[str, Any]) -> str:
    """Final losses and speedups: the paper's (at the baseline's final loss) and, because that
    one is only a bound when a run never gets there, the exact one at the run's own final loss."""
    lines = ["| run | tokens | FLOPs | FLOPs / scratch | final valid loss | Δ vs scratch "
             "| speedup at scratch's final loss (FLOPs) | (tokens) "
             "| speedup at the run's final loss (FLOPs) | (tokens) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"].values():
        sp = r.get("speedup")
        cells = [r["label"], f"{r['total_tokens']:,}", f"{r['total_flops']:.3e}",
                 f"{r['flops_vs_baseline']:.3f}", f"{r['final_valid_loss']:.4f}"]
        if sp:
            cells.append(f"{r['final_loss_minus_baseline']:+.4f}")
            cells += [_fmt_speedup(sp[axis][at]) for at in ("at_baseline_final_loss", "at_run_final_loss")
                      for axis in ("flops", "tokens")]
        else:
            cells += ["—"] * 5
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Speedup = x_scratch(L) / x_run(L) - 1 (the paper's definition), x in FLOPs "
                 "(small model charged) or tokens, linearly interpolated between evaluations, "
                 "at L = the scratch run's final validation loss or the run's own. ≥ / ≤ mark "
                 "bounds where a run never reaches L (then only the other column is exact).")
    return "\n".join(lines)


def write_report(runs: Sequence[RunSpec], output_dir: str, baseline: str, title: str = "",
                 extra: Optional[dict] = None) -> dict[str, Any]:
    check_unique_names(runs)
    os.makedirs(output_dir, exist_ok=True)
    by_name = {r.name: build_curve(r.label, r.phases) for r in runs}
    results = compare(runs, baseline, by_name)
    results.update(extra or {})
    curves = list(by_name.values())
    growth_x = {}
    for r, c in zip(runs, curves):
        if len(r.phases) > 1:
            first = [p for p in c.points if p.phase == 0]
            if first:
                growth_x[r.label] = first[-1]
    plots = {}
    for axis in ("flops", "tokens"):
        path = os.path.join(output_dir, f"valid_loss_vs_{axis}.png")
        plot_curves(curves, axis, path, title=title,
                    growth_x={k: float(getattr(v, axis)) for k, v in growth_x.items()})
        plots[axis] = path
    results["plots"] = {k: os.path.relpath(v, output_dir) for k, v in plots.items()}
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown_table(results)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(f"# {title or 'Growth comparison'}\n\n{table}\n\n"
                + "".join(f"![validation loss vs {a}]({p})\n\n" for a, p in results["plots"].items()))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastack.experiments.report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", required=True, help="NAME|LABEL|MODEL:METRICS[,...]")
    p.add_argument("--baseline", required=True, help="NAME of the scratch run")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        runs = [parse_run_spec(r) for r in args.run]
        results = write_report(runs, args.output_dir, args.baseline, args.title)
    except (ValueError, OSError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    print(f"\nresults: {os.path.join(args.output_dir, 'results.json')}")
    for axis, rel in results["plots"].items():
        print(f"plot ({axis}): {os.path.join(args.output_dir, rel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
