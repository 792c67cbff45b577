"""The kernel benchmark's host-side parts, checked on CPU: a broken script would otherwise only
show on a GPU machine, whose time is scarce."""

import json

import pytest
import torch

from tests.scripts import load_script

@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/kernels/bench_kernels.py")


META = dict(device="NVIDIA H200", peak_gb_per_s=4800.0, copy_gb_per_s=4260.0, tokens=16384,
            torch="2.11.0", cuda="13.0")


def _row(impl, ms, host_ms, graph_ms=None, graph_pct_peak=None):
    return dict(kernel="rmsnorm", impl=impl, dtype="bf16", ms=ms, host_ms=host_ms,
                gb_per_s=2896.3, pct_peak=60.3, pct_copy=68.0, speedup_vs_eager=12.53,
                graph_ms=graph_ms, graph_pct_peak=graph_pct_peak)


def test_peak_bandwidth_matches_the_most_specific_name(bench):
    assert bench.peak_bandwidth("NVIDIA H200") == 4.8e12
    assert bench.peak_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert bench.peak_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.peak_bandwidth("Tesla T4") is None


def test_table_has_a_row_per_result_with_every_column(bench):
    rows = [_row("fused", 0.2317, 0.041), _row("fused-staged-3", 0.2011, 0.043, 0.1893, 74.0)]
    table = bench.to_markdown([META] + rows).splitlines()
    header = next(line for line in table if line.startswith("| kernel"))
    body = [line for line in table if line.startswith("| rmsnorm")]
    assert len(body) == 2
    assert "host ms" in header and "graph ms" in header
    for line in body:
        assert line.count("|") == header.count("|")
    assert "| fused-staged-3 | bf16 | 0.2011 | 0.043 |" in body[1]
    assert body[0].endswith("| - | - |")  # no graph time (capture failed)
    assert body[1].endswith("| 0.1893 | 74.0 |")


def test_target_verdict_takes_the_fastest_fused_path(bench):
    rows = [_row("fused", 0.2317, 0.041), _row("eager", 2.9, 0.05),
            dict(_row("fused-staged-3", 0.1990, 0.043), pct_peak=70.3, speedup_vs_eager=14.6),
            dict(_row("fused", 0.793, 0.03), kernel="swiglu", pct_peak=75.8,
                 speedup_vs_eager=1.9)]
    text = bench.to_markdown([META] + rows)
    assert ("- rmsnorm: fastest fused path `fused-staged-3`, 0.199 ms, 70.3% of peak, 14.6x "
            "eager: target met\n") in text
    assert "- swiglu: fastest fused path `fused`" in text and "1.9x eager: target not met" in text
    meta = dict(META, peak_gb_per_s=None)  # unknown device: no verdict
    assert "Target" not in bench.to_markdown([meta] + [dict(r, pct_peak=None) for r in rows])


def test_verdict_is_on_the_stream_time_and_names_the_graph_time(bench):
    # Host-bound: the kernels alone would meet the target, the op as launched does not.
    rows = [dict(_row("fused", 0.2317, 0.22, 0.1893, 74.0)), _row("eager", 2.9, 0.05)]
    text = bench.to_markdown([META] + rows)
    assert ("- rmsnorm: fastest fused path `fused`, 0.2317 ms, 60.3% of peak, 12.53x eager: "
            "target not met (its kernels alone, replayed as a CUDA graph: 0.1893 ms, 74.0% of "
            "peak)") in text


def test_step_returns_gradients_without_accumulating_them(bench):
    """fwd_bwd must run the backward (so it is timed) but leave .grad alone: accumulating the
    residual case's shared gradient would time a copy the model never makes."""
    x = torch.randn(6, 8, requires_grad=True)
    r = torch.randn(6, 8, requires_grad=True)
    w = torch.rand(8, requires_grad=True)
    seen = []

    def op(x, r, w):
        s = x + r
        s.register_hook(lambda g: seen.append(g.clone()))
        return s * w, s

    bench.fwd_bwd(op, [x, r, w], torch.ones(6, 8))()
    assert len(seen) == 1  # the backward ran through the op
    assert x.grad is None and r.grad is None and w.grad is None


def test_results_are_written_whole(bench, tmp_path):
    results = [META, _row("fused", 0.2317, 0.041)]
    bench.write_results(tmp_path, results)
    assert json.loads((tmp_path / "bench_kernels.json").read_text()) == results
    assert "| rmsnorm | fused |" in (tmp_path / "bench_kernels.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_refuses_to_run_without_cuda(bench, tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        bench.main(["--out", str(tmp_path)])
