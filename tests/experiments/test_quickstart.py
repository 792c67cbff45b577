"""The quickstart pipeline end to end (slow) and the comparison math behind it (fast)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megastack.config import ModelConfig
from megastack.experiments.curves import Curve, EvalPoint, Phase, build_curve
from megastack.experiments.flops_budget import large_phase_iters
from megastack.experiments.holdout import split_documents, write_holdout
from megastack.experiments.model_spec import parse_model_spec
from megastack.experiments.report import compare, markdown_table, parse_run_spec, write_report
from megastack.experiments.speedup import first_crossing, paper_speedup, speedup_at_loss

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = ModelConfig.from_name("mini-2l128h")
LARGE = ModelConfig.from_name("mini-8l128h")


def curve(name, xs, losses) -> Curve:
    return Curve(name, [EvalPoint(tokens=int(x), flops=float(x) * 10, loss=l, phase=0)
                        for x, l in zip(xs, losses)])


# ---------------------------------------------------------------- crossing and speedup

def test_first_crossing_interpolates_linearly():
    assert first_crossing([100, 200], [4.0, 3.0], 3.5) == pytest.approx(150.0)
    assert first_crossing([100, 200, 300], [4.0, 3.0, 2.0], 2.25) == pytest.approx(275.0)


def test_first_crossing_takes_the_first_time_the_loss_is_reached():
    # The loss dips below 3.0 at x=200, comes back up, and dips again: the first crossing counts.
    assert first_crossing([100, 200, 300, 400], [4.0, 2.0, 3.5, 1.0], 3.0) == pytest.approx(150.0)
    assert first_crossing([100, 200], [2.0, 1.0], 3.0) == 100.0  # already below at the start


def test_first_crossing_none_when_never_reached():
    assert first_crossing([1, 2, 3], [5.0, 4.0, 3.5], 3.0) is None


def test_first_crossing_rejects_bad_curves():
    with pytest.raises(ValueError, match="strictly increase"):
        first_crossing([1, 1], [2.0, 1.0], 1.5)
    with pytest.raises(ValueError, match="losses"):
        first_crossing([1, 2], [2.0], 1.5)


def test_paper_speedup_is_scratch_over_grown_minus_one():
    # Scratch reaches its final loss 3.0 at 300; the grown run reaches 3.0 at 200 -> +50%.
    scratch = curve("scratch", [100, 200, 300], [5.0, 4.0, 3.0])
    grown = curve("grown", [100, 200, 300], [4.0, 3.0, 2.5])
    sp = paper_speedup(scratch, grown, "tokens")
    assert sp.kind == "exact"
    assert sp.value == pytest.approx(300 / 200 - 1)
    assert sp.target_loss == 3.0
    # The headline number of the paper, as a sanity check of the definition.
    assert paper_speedup(curve("s", [100, 300], [3.0, 2.0]),
                         curve("g", [100, 194], [3.0, 2.0]), "tokens").value == pytest.approx(0.546, abs=1e-3)


def test_speedup_on_flops_axis_uses_flops():
    scratch = Curve("s", [EvalPoint(100, 1000.0, 4.0, 0), EvalPoint(200, 2000.0, 3.0, 0)])
    grown = Curve("g", [EvalPoint(100, 500.0, 4.0, 0), EvalPoint(200, 1000.0, 3.0, 0)])
    assert speedup_at_loss(scratch, grown, 3.0, "flops").value == pytest.approx(1.0)
    assert speedup_at_loss(scratch, grown, 3.0, "tokens").value == pytest.approx(0.0)


def test_speedup_lower_bound_when_scratch_never_reaches_the_loss():
    scratch = curve("scratch", [100, 200], [5.0, 4.0])
    grown = curve("grown", [100, 200], [4.0, 3.0])
    sp = speedup_at_loss(scratch, grown, 3.5, "tokens")
    assert sp.kind == "lower_bound"
    assert sp.scratch_x is None
    assert sp.value == pytest.approx(200 / 150 - 1)
    assert "scratch never reaches" in sp.reason
    assert sp.describe().startswith(">= ")


def test_speedup_upper_bound_when_grown_run_never_reaches_the_loss():
    scratch = curve("scratch", [100, 200], [4.0, 3.0])
    grown = curve("grown", [100, 200], [5.0, 4.0])
    sp = paper_speedup(scratch, grown, "tokens")
    assert sp.kind == "upper_bound"
    assert sp.value == pytest.approx(200 / 200 - 1)
    assert "grown run never reaches" in sp.reason


def test_speedup_null_with_reason_when_neither_reaches():
    sp = speedup_at_loss(curve("s", [1, 2], [5.0, 4.0]), curve("g", [1, 2], [5.0, 4.5]), 1.0, "tokens")
    assert sp.value is None and sp.kind is None
    assert "neither" in sp.reason
    assert sp.describe().startswith("n/a")


# ---------------------------------------------------------------- FLOPs accounting

def write_metrics(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_build_curve_charges_the_small_model_and_continues_the_stream(tmp_path):
    small = write_metrics(tmp_path / "small.jsonl", [
        {"iteration": 10, "consumed tokens": 1000, "lm loss": 6.0},
        {"iteration": 10, "consumed tokens": 1000, "lm loss validation": 5.5},
    ])
    # The grown phase resumes the data stream at 1000 tokens.
    grown = write_metrics(tmp_path / "grown.jsonl", [
        {"iteration": 10, "consumed tokens": 2000, "lm loss": 5.0},
        {"iteration": 10, "consumed tokens": 2000, "lm loss validation": 4.5},
        {"iteration": 20, "consumed tokens": 3000, "lm loss": 4.0},
        {"iteration": 20, "consumed tokens": 3000, "lm loss validation": 4.0},
    ])
    c = build_curve("g", [Phase(SMALL, small), Phase(LARGE, grown)])
    fs, fl = SMALL.flops_per_token(), LARGE.flops_per_token()
    assert [p.tokens for p in c.points] == [1000, 2000, 3000]
    assert [p.phase for p in c.points] == [0, 1, 1]
    assert c.points[0].flops == pytest.approx(1000 * fs)
    assert c.points[2].flops == pytest.approx(1000 * fs + 2000 * fl)
    assert c.total_flops == pytest.approx(1000 * fs + 2000 * fl)
    assert c.total_tokens == 3000
    assert c.final.loss == 4.0


def test_phase_end_counts_an_evaluation_after_the_last_training_log(tmp_path):
    # --exit-interval 12 with --log-interval 10: the last line at 1200 tokens is an evaluation.
    small = write_metrics(tmp_path / "s.jsonl", [
        {"iteration": 10, "consumed tokens": 1000, "lm loss": 6.0},
        {"iteration": 12, "consumed tokens": 1200, "lm loss validation": 5.0}])
    grown = write_metrics(tmp_path / "g.jsonl", [
        {"iteration": 10, "consumed tokens": 2200, "lm loss": 5.0},
        {"iteration": 10, "consumed tokens": 2200, "lm loss validation": 4.0}])
    c = build_curve("g", [Phase(SMALL, small), Phase(LARGE, grown)])
    assert c.total_tokens == 2200
    assert c.total_flops == pytest.approx(1200 * SMALL.flops_per_token() + 1000 * LARGE.flops_per_token())


def test_build_curve_with_a_restarted_stream(tmp_path):
    # --finetune restarts consumed tokens at 0; phase_start_tokens says so.
    small = write_metrics(tmp_path / "s.jsonl", [{"iteration": 1, "consumed tokens": 500, "lm loss": 6.0}])
    grown = write_metrics(tmp_path / "g.jsonl", [
        {"iteration": 1, "consumed tokens": 500, "lm loss": 5.0},
        {"iteration": 1, "consumed tokens": 500, "lm loss validation": 4.9}])
    c = build_curve("g", [Phase(SMALL, small), Phase(LARGE, grown)], phase_start_tokens=[0, 0])
    assert c.points[0].tokens == 1000
    assert c.points[0].flops == pytest.approx(500 * SMALL.flops_per_token() + 500 * LARGE.flops_per_token())


def test_build_curve_errors_are_actionable(tmp_path):
    empty = write_metrics(tmp_path / "e.jsonl", [])
    with pytest.raises(ValueError, match="MEGASTACK_METRICS_FILE"):
        build_curve("x", [Phase(LARGE, empty)])
    no_eval = write_metrics(tmp_path / "n.jsonl", [{"iteration": 1, "consumed tokens": 5, "lm loss": 1.0}])
    with pytest.raises(ValueError, match="--eval-interval"):
        build_curve("x", [Phase(LARGE, no_eval)]).final
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        build_curve("x", [Phase(LARGE, str(bad))])


def test_large_phase_iters_spends_the_scratch_budget():
    ratio = SMALL.flops_per_token() / LARGE.flops_per_token()
    n = large_phase_iters(160, 40, SMALL, LARGE)
    assert n == round(160 - 40 * ratio)
    assert abs(40 * ratio + n - 160) <= 0.5
    assert large_phase_iters(160, 40, SMALL, LARGE, multiple_of=8) % 8 == 0
    with pytest.raises(ValueError, match="grow earlier"):
        large_phase_iters(10, 1000, SMALL, LARGE)


def test_parse_model_spec():
    m = parse_model_spec("mini-8l128h+hidden_size=64+num_attention_heads=2+num_query_groups=2")
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (8, 64, 2)
    with pytest.raises(ValueError, match="field=value"):
        parse_model_spec("mini-8l128h+nonsense=3")
    with pytest.raises(ValueError, match="not a known preset"):
        parse_model_spec("no-such-model")


def test_parse_run_spec_errors():
    with pytest.raises(ValueError, match="NAME\\|LABEL"):
        parse_run_spec("only-a-name")
    with pytest.raises(ValueError, match="MODEL:METRICS_FILE"):
        parse_run_spec("a|b|mini-8l128h")


# ---------------------------------------------------------------- held-out documents

def test_split_documents_holds_out_whole_documents_deterministically():
    docs = [json.dumps({"id": i, "text": f"doc {i}"}) for i in range(40)]
    train, valid = split_documents(docs, 0.1, seed=7)
    assert len(valid) == 4 and len(train) == 36
    assert sorted(train + valid) == sorted(docs)
    assert not set(train) & set(valid)
    assert split_documents(docs, 0.1, seed=7) == (train, valid)
    assert split_documents(docs, 0.1, seed=8) != (train, valid)
    with pytest.raises(ValueError, match="valid-fraction"):
        split_documents(docs, 1.5, seed=7)
    with pytest.raises(ValueError, match="at least 2"):
        split_documents(docs[:1], 0.1, seed=7)


def test_megatron_split_string_gives_exactly_the_held_out_documents(tmp_path):
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(1237)))
    split = write_holdout([str(src)], str(tmp_path / "out"), valid_fraction=0.05, seed=1)
    n = split.num_train_documents + split.num_valid_documents
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split.megatron_split))
    # The document-index bounds megatron-core's builder computes for the train and valid splits.
    bounds = [(int(round(a * n)), int(round(b * n))) for a, b in matrix[:2]]
    assert bounds == [(0, split.num_train_documents), (split.num_train_documents, n)]
    assert matrix[2] is None
    lines = (tmp_path / "out" / "all.jsonl").read_text().splitlines()
    valid = (tmp_path / "out" / "valid.jsonl").read_text().splitlines()
    assert lines[split.num_train_documents:] == valid


# ---------------------------------------------------------------- report

def test_write_report_outputs_parse(tmp_path):
    def run(name, losses):
        return write_metrics(tmp_path / f"{name}.jsonl", [
            r for i, l in enumerate(losses, 1) for r in (
                {"iteration": i, "consumed tokens": 1000 * i, "lm loss": l + 0.1},
                {"iteration": i, "consumed tokens": 1000 * i, "lm loss validation": l})])
    runs = [parse_run_spec(f"scratch|scratch 8L|mini-8l128h:{run('scratch', [6.0, 5.0, 4.0])}"),
            parse_run_spec(f"g|G_stack|mini-8l128h:{run('g', [5.5, 4.0, 3.5])}")]
    results = write_report(runs, str(tmp_path / "out"), baseline="scratch", title="t")
    loaded = json.loads((tmp_path / "out" / "results.json").read_text())
    assert loaded["runs"]["g"]["speedup"]["tokens"]["at_baseline_final_loss"]["value"] == pytest.approx(0.5)
    assert loaded["runs"]["g"]["final_valid_loss"] == 3.5
    assert "speedup" not in loaded["runs"]["scratch"]
    for rel in loaded["plots"].values():
        assert (tmp_path / "out" / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = markdown_table(results)
    assert "+50.0%" in table and "3.5000" in table
    with pytest.raises(ValueError, match="baseline run"):
        compare(runs, baseline="missing")


# ---------------------------------------------------------------- the quickstart itself

TINY_ENV = {
    "MAX_DOCUMENTS": "30", "VOCAB_SIZE": "512", "HIDDEN_SIZE": "64", "NUM_ATTENTION_HEADS": "2",
    "FFN_HIDDEN_SIZE": "176", "SEQ_LENGTH": "64", "TRAIN_ITERS": "8", "SMALL_ITERS": "4",
    "EVAL_INTERVAL": "2", "EVAL_ITERS": "1", "LOG_INTERVAL": "2", "WARMUP_ITERS": "1",
    "GROWN_WARMUP_ITERS": "1", "MICRO_BATCH_SIZE": "4", "GLOBAL_BATCH_SIZE": "4",
}


@pytest.mark.slow
def test_quickstart_end_to_end_tiny(tmp_path):
    out = tmp_path / "tiny_gstack"
    env = {**os.environ, **TINY_ENV, "OUTPUT_DIR": str(out), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.run(["bash", str(REPO_ROOT / "examples" / "pretrain_tiny_gstack.sh")],
                          env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"scratch", "gstack"}
    scratch, gstack = results["runs"]["scratch"], results["runs"]["gstack"]
    assert scratch["total_tokens"] == 8 * 4 * 64
    assert [p["model"]["num_layers"] for p in gstack["phases"]] == [2, 8]
    # The small model is charged: the grown run's FLOPs are those of both phases.
    fl = [p["flops_per_token"] for p in gstack["phases"]]
    assert gstack["total_flops"] == pytest.approx(4 * 4 * 64 * fl[0] + (gstack["total_tokens"] - 4 * 4 * 64) * fl[1])
    assert 0.85 < gstack["flops_vs_baseline"] < 1.15
    # The grown model resumes the data stream where the small model stopped (it relies on the
    # grown checkpoint keeping consumed_train_samples), instead of training on it again.
    grown_first = json.loads((out / "metrics" / "grown.jsonl").read_text().splitlines()[0])
    assert grown_first["consumed tokens"] == (4 + 2) * 4 * 64
    assert all(math.isfinite(p["valid_loss"]) for r in (scratch, gstack) for p in r["curve"])
    assert gstack["speedup"]["flops"]["at_baseline_final_loss"]["kind"] in (
        "exact", "lower_bound", "upper_bound")
    for name in ("valid_loss_vs_flops.png", "valid_loss_vs_tokens.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    for ckpt in ("small", "grown_init", "grown", "scratch"):
        assert (out / "checkpoints" / ckpt / "latest_checkpointed_iteration.txt").exists()
    for tb in ("small", "grown", "scratch"):
        assert any((out / "tensorboard" / tb).glob("events.out.tfevents.*"))
    assert "TensorBoard logs:" in proc.stdout and "plot:" in proc.stdout
    print(f"tiny quickstart took {elapsed:.0f}s")


def test_quickstart_rerun_replaces_its_own_output_dir(tmp_path):
    out = tmp_path / "tiny_gstack"
    out.mkdir()
    (out / ".pretrain_tiny_gstack").touch()
    (out / "stale-result.json").write_text("{}")
    # A missing input stops the script right after it has replaced the directory.
    proc = subprocess.run(["bash", str(REPO_ROOT / "examples" / "pretrain_tiny_gstack.sh")],
                          env={**os.environ, "OUTPUT_DIR": str(out), "PYTHON": sys.executable,
                               "DATA_INPUT": str(tmp_path / "missing.jsonl")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "missing.jsonl" in proc.stderr
    assert not (out / "stale-result.json").exists()
    assert (out / ".pretrain_tiny_gstack").exists()


def test_quickstart_refuses_a_foreign_output_dir(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    proc = subprocess.run(["bash", str(REPO_ROOT / "examples" / "pretrain_tiny_gstack.sh")],
                          env={**os.environ, "OUTPUT_DIR": str(foreign), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not made by this script" in proc.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"
