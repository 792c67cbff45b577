"""Bad or unusual inputs to the experiment tools: clear errors, nothing silently lost or partial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megastack.config import ModelConfig
from megastack.experiments.curves import Phase, build_curve
from megastack.experiments.flops_budget import large_phase_iters
from megastack.experiments.holdout import main as holdout_main
from megastack.experiments.holdout import read_documents
from megastack.experiments.model_spec import parse_model_spec
from megastack.experiments.report import compare, main as report_main, parse_run_spec
from megastack.experiments.speedup import paper_speedup

LARGE = ModelConfig.from_name("mini-8l128h")


def write_lines(path: Path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


# ---------------------------------------------------------------- holdout

GOOD = [json.dumps({"text": f"document {i}"}) for i in range(6)]


@pytest.mark.parametrize("bad, what", [("[1, 2]", "JSON object"), ('"just a string"', "JSON object"),
                                       ("5", "JSON object"), ('{"text": 5}', "must be a string"),
                                       ('{"text": ["a"]}', "must be a string")])
def test_holdout_rejects_valid_json_that_is_not_a_document(tmp_path, capsys, bad, what):
    src = write_lines(tmp_path / "a.jsonl", GOOD[:3] + [bad] + GOOD[3:])
    out = tmp_path / "out"
    assert holdout_main(["--input", src, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:4:" in err and what in err
    assert not out.exists() or not any(out.iterdir())  # nothing partial written


def test_holdout_skips_documents_without_text(tmp_path):
    src = write_lines(tmp_path / "a.jsonl", GOOD[:2] + ['{"id": 1}', '{"text": null}', '{"text": "  "}'])
    assert read_documents([src]) == GOOD[:2]


# ---------------------------------------------------------------- report: duplicate run names

def _metrics(path: Path, losses) -> str:
    return write_lines(path, [json.dumps(r) for i, l in enumerate(losses, 1) for r in (
        {"iteration": i, "consumed tokens": 1000 * i, "lm loss": l + 0.1},
        {"iteration": i, "consumed tokens": 1000 * i, "lm loss validation": l})])


def test_report_rejects_a_repeated_run_name(tmp_path, capsys):
    a = _metrics(tmp_path / "a.jsonl", [6.0, 5.0])
    b = _metrics(tmp_path / "b.jsonl", [5.5, 4.0])
    out = tmp_path / "out"
    rc = report_main(["--output-dir", str(out), "--baseline", "a",
                      "--run", f"a|A|mini-8l128h:{a}", "--run", f"a|B|mini-8l128h:{b}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--run" in err and "'a'" in err and "more than once" in err
    runs = [parse_run_spec(f"a|A|mini-8l128h:{a}"), parse_run_spec(f"a|B|mini-8l128h:{b}")]
    with pytest.raises(ValueError, match="--run name 'a'"):
        compare(runs, baseline="a")


# ---------------------------------------------------------------- resumed metrics files

def test_resumed_metrics_file_later_records_win(tmp_path):
    # Iterations 1..6, then the run resumed from its iteration-4 checkpoint logs 5..8 again.
    def recs(iters, loss):
        return [json.dumps(r) for i in iters for r in (
            {"iteration": i, "consumed tokens": 100 * i, "lm loss": loss(i) + 0.1},
            {"iteration": i, "consumed tokens": 100 * i, "lm loss validation": loss(i)})]
    path = write_lines(tmp_path / "resumed.jsonl",
                       recs(range(1, 7), lambda i: 10.0 - i) + recs(range(5, 9), lambda i: 9.5 - i))
    c = build_curve("resumed", [Phase(LARGE, path)])
    assert [p.tokens for p in c.points] == [100 * i for i in range(1, 9)]
    assert [p.loss for p in c.points] == [9.0, 8.0, 7.0, 6.0, 4.5, 3.5, 2.5, 1.5]
    assert c.total_tokens == 800
    # ... and a report over it works instead of failing on non-increasing x values.
    scratch = _metrics(tmp_path / "s.jsonl", [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 1.0])
    sp = paper_speedup(build_curve("s", [Phase(LARGE, scratch)]), c, "tokens")
    assert sp.value is not None


def test_resumed_after_an_evaluation_drops_the_redone_evaluation(tmp_path):
    # The first run logged training and evaluation at 5, then resumed from 4 and redid 5.
    path = write_lines(tmp_path / "m.jsonl", [json.dumps(r) for r in (
        {"iteration": 4, "consumed tokens": 400, "lm loss": 6.0},
        {"iteration": 4, "consumed tokens": 400, "lm loss validation": 6.0},
        {"iteration": 5, "consumed tokens": 500, "lm loss": 5.0},
        {"iteration": 5, "consumed tokens": 500, "lm loss validation": 5.0},
        {"iteration": 5, "consumed tokens": 500, "lm loss": 4.8},
        {"iteration": 5, "consumed tokens": 500, "lm loss validation": 4.7})])
    c = build_curve("m", [Phase(LARGE, path)])
    assert [(p.tokens, p.loss) for p in c.points] == [(400, 6.0), (500, 4.7)]


# ---------------------------------------------------------------- equal-FLOPs budget

def test_large_phase_iters_never_exceeds_the_scratch_budget():
    small = parse_model_spec("mini-2l128h+vocab_size=4096")
    large = parse_model_spec("mini-8l128h+vocab_size=4096")
    ratio = small.flops_per_token() / large.flops_per_token()
    # TRAIN_ITERS=16 SMALL_ITERS=8 EVAL_INTERVAL=8: 12.8 iterations left, nearest multiple 16.
    n = large_phase_iters(16, 8, small, large, multiple_of=8)
    assert n == 8
    assert 8 * ratio + n <= 16
    for budget, d, m in [(128, 40, 8), (128, 64, 8), (128, 32, 8), (160, 40, 1), (100, 10, 7)]:
        n = large_phase_iters(budget, d, small, large, multiple_of=m)
        assert n % m == 0 and n >= m
        assert d * ratio + n <= budget or n == m
        assert d * ratio + n + m > budget  # the largest multiple that fits
    # The quickstart defaults (TRAIN_ITERS=128 SMALL_ITERS=40 EVAL_INTERVAL=8) keep 112.
    assert large_phase_iters(128, 40, small, large, multiple_of=8) == 112
    # A budget that leaves less than one multiple still gets one.
    assert large_phase_iters(16, 40, small, large, multiple_of=8) == 8
