import math
import subprocess
import sys

import pytest

from megastack.growth.timing import (
    GROWTH_FACTOR,
    format_count,
    growth_timing,
    growth_tokens,
    growth_warnings,
    parse_count,
)
from tests.scripts import load_script


@pytest.mark.parametrize("n, d, expected", [
    (7e9, 2e12, "11.11B"),   # Llama2-7B
    (8e9, 15e12, "6.58B"),   # Llama3-8B
    (13e9, 2e12, "15.84B"),  # Llama2-13B
    (70e9, 2e12, "42.48B"),  # Llama2-70B
])
def test_reproduces_paper_table(n, d, expected):
    assert format_count(growth_tokens(n, d)) == expected


def test_formula_by_hand():
    n, d = 1e9, 1e11
    c = 6 * n * d
    assert growth_tokens(n, d) == pytest.approx(10 ** (0.88 * math.log10(n) + 163.27 / math.log10(c) - 5.74))


def test_no_warning_inside_fitted_range():
    assert growth_warnings(7e9, 2e12) == []
    assert growth_timing(1e9, 1e12).growth_factor == GROWTH_FACTOR == 4


def test_warnings_outside_range():
    small = growth_warnings(1e7, 1e9)
    assert any("not smaller than the total budget" in w for w in small)
    assert any("below the fitted range" in w for w in small)
    assert any("above the fitted range" in w for w in growth_warnings(70e9, 2e12))


@pytest.mark.parametrize("bad", [(0, 1e9), (1e9, -1), (math.nan, 1e9), (math.inf, 1e9), (0.1, 1.0)])
def test_rejects_bad_inputs(bad):
    with pytest.raises(ValueError):
        growth_tokens(*bad)


@pytest.mark.parametrize("text, value", [
    ("7e9", 7e9), ("7B", 7e9), ("7b", 7e9), ("2T", 2e12), ("410M", 4.1e8), ("1.5k", 1500.0),
    ("7000000000", 7e9),
])
def test_parse_count(text, value):
    assert parse_count(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "7X", "B", "-7B", "0", "7 B B", "1e999"])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


def test_tool_prints_d_g_and_warnings(capsys):
    tool = load_script("tools/growth_timing.py")
    assert tool.main(["--params", "7B", "--tokens", "2T"]) == 0
    out = capsys.readouterr().out
    assert "grow after d:        11.11B tokens" in out
    assert "growth factor g:     4" in out
    assert "warning" not in out
    assert tool.main(["--params", "1e7", "--tokens", "1e9"]) == 0
    assert capsys.readouterr().out.count("warning:") == 2
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--params", "7X", "--tokens", "2T"])
    assert exit_info.value.code == 2
    assert "cannot read '7X'" in capsys.readouterr().err
    # counts that parse but are out of the guideline's domain: a message, not a traceback
    assert tool.main(["--params", "0.1", "--tokens", "1"]) == 2
    assert "error: the guideline needs C = 6*N*D > 1 FLOP" in capsys.readouterr().err


SCRIPT = """
import runpy, sys
sys.argv = ["growth_timing.py", "--params", "8e9", "--tokens", "15T"]
try:
    runpy.run_path(sys.argv_tool, run_name="__main__")
except SystemExit as exit_:
    assert exit_.code == 0, exit_.code
assert "torch" not in sys.modules, "the timing tool imported torch"
"""


def test_tool_runs_as_a_script_without_torch(repo_root):
    tool = str(repo_root / "tools" / "growth_timing.py")
    script = SCRIPT.replace("sys.argv_tool", repr(tool))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "6.58B" in run.stdout and "above the fitted range" in run.stdout
