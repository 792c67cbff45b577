"""The committed growth benchmark: results.json parses, and docs/experiments.md shows its numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from megastack.experiments.report import markdown_table

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "benchmarks" / "growth" / "results.json"
DOC = REPO_ROOT / "docs" / "experiments.md"
README = REPO_ROOT / "README.md"

pytestmark = pytest.mark.skipif(not RESULTS.exists(), reason="benchmarks/growth has no results yet")


def load_results() -> dict:
    return json.loads(RESULTS.read_text())


def test_results_json_holds_every_number():
    results = load_results()
    assert results["baseline"] == "scratch"
    base = results["runs"]["scratch"]
    assert results["command"].startswith("OMP_NUM_THREADS=1 python benchmarks/growth/run.py")
    for name, run in results["runs"].items():
        assert math.isfinite(run["final_valid_loss"])
        assert run["curve"][-1]["valid_loss"] == run["final_valid_loss"]
        xs = [p["flops"] for p in run["curve"]]
        assert xs == sorted(xs)
        assert run["total_flops"] == pytest.approx(
            sum(p["flops_per_token"] * t for p, t in zip(run["phases"], _phase_tokens(run))))
        if name != "scratch":
            assert run["final_loss_minus_baseline"] == pytest.approx(
                run["final_valid_loss"] - base["final_valid_loss"])
            for axis in ("flops", "tokens"):
                sp = run["speedup"][axis]["at_baseline_final_loss"]
                assert sp["kind"] in ("exact", "lower_bound", "upper_bound", None)
                assert (sp["value"] is None) == (sp["kind"] is None)
    for rel in results["plots"].values():
        assert (RESULTS.parent / rel).read_bytes()[:4] == b"\x89PNG"


def _phase_tokens(run: dict) -> list[int]:
    """Tokens each phase trained on: the small phase ends at the grown run's growth point."""
    if len(run["phases"]) == 1:
        return [run["total_tokens"]]
    small = run["growth_tokens"]
    return [small, run["total_tokens"] - small]


def test_doc_shows_the_json_numbers():
    results = load_results()
    doc = DOC.read_text()
    assert markdown_table(results) in doc, (
        "docs/experiments.md must carry the table generated from benchmarks/growth/results.json "
        "(copy benchmarks/growth/results.md's table)")


def test_readme_shows_the_json_numbers():
    results = load_results()
    assert markdown_table(results) in README.read_text(), (
        "README.md must carry the table generated from benchmarks/growth/results.json")
    # The prose quotes the latest G_stack growth point (64 small-model iterations = 131k tokens).
    latest = results["runs"]["gstack_d64"]
    speedup = latest["speedup"]["flops"]["at_baseline_final_loss"]["value"]
    assert f"+{100 * speedup:.1f}% FLOPs speedup" in README.read_text()
    assert f"{-latest['final_loss_minus_baseline']:.3f} nats" in README.read_text()
