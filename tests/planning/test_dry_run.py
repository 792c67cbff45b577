"""The recipes' --dry-run (CI runs the 7B one for 1, 8 and 64 nodes) and tools/plan.py."""

import os
import subprocess
import sys

import pytest


def dry_run(repo_root, script, **env):
    full_env = {**os.environ, "PYTHON": sys.executable, **{k: str(v) for k, v in env.items()}}
    for var in ("SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NODEID", "MASTER_ADDR"):
        full_env.pop(var, None)
    return subprocess.run(["bash", str(repo_root / "examples" / script), "--dry-run"], env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("nnodes,large_dp", [(1, 2), (8, 16), (64, 128)])
def test_7b_dry_run_prints_all_phases(repo_root, nnodes, large_dp):
    result = dry_run(repo_root, "pretrain_7b_gstack.sh", NNODES=nnodes)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("phase 1: train the small model", "phase 2: grow", "phase 3: train the grown model",
                    "before growth:", "after growth:"):
        assert heading in out
    assert f"world {nnodes * 8} = TP 1 x PP 1 x DP {nnodes * 8}; 8 layers per stage" in out
    assert f"world {nnodes * 8} = TP 2 x PP 2 x DP {large_dp}; 16 layers per stage" in out
    assert "stage 0: layers 0-7 + embedding, final norm, output layer" in out
    assert ("stage 1: chunk 0: layers 4-7 | chunk 1: layers 12-15 | chunk 2: layers 20-23 | "
            "chunk 3: layers 28-31 + final norm, output layer") in out
    assert "--stacking-list '0-7*4'" in out
    assert out.count(": fits") == 2 and "WARNING" not in out
    assert "guideline" in result.stderr  # d came from the growth guideline


def test_1b_dry_run(repo_root):
    result = dry_run(repo_root, "pretrain_1b_gstack.sh")
    assert result.returncode == 0, result.stderr
    assert "small model 10,000,000,000 tokens before growth" in result.stdout
    assert "24 layers, hidden 2048" in result.stdout


def test_dry_run_rejects_a_bad_layout(repo_root):
    result = dry_run(repo_root, "pretrain_7b_gstack.sh", LARGE_PP=3, LARGE_VPP_LAYERS="")
    assert result.returncode == 2
    assert "phase 'large'" in result.stderr and "--pipeline-model-parallel-size 3" in result.stderr


def test_dry_run_warns_when_a_phase_does_not_fit(repo_root):
    result = dry_run(repo_root, "pretrain_7b_gstack.sh", LARGE_TP=1, LARGE_PP=1, LARGE_VPP_LAYERS="",
                     DISTRIBUTED_OPTIMIZER=0)
    assert result.returncode == 0, result.stderr
    assert "WARNING: phase 'large' will not fit" in result.stdout


def test_plan_tool_single_phase(capsys):
    sys.path.insert(0, "tools")
    from plan import main  # tools/plan.py

    assert main(["--model", "tiny-8l", "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                 "--num-layers-per-virtual-pipeline-stage", "2", "--global-batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "stage 0: chunk 0: layers 0-1 + embedding | chunk 1: layers 4-5" in out
    assert main(["--model", "tiny-8l", "--pipeline-model-parallel-size", "3", "--nproc-per-node",
                 "3", "--account-for-embedding-in-pipeline-split"]) == 0
    out = capsys.readouterr().out
    assert "2/3/3 layers per stage" in out and "stage 0: layers 0-1 + embedding" in out
    assert main(["--model", "tiny-8l", "--vocab-size", "500", "--tensor-model-parallel-size", "2"]) == 0
    assert "vocab 512" in capsys.readouterr().out  # padded like the trainer pads it
    assert main(["--model", "tiny-8l", "--global-batch-size", "12"]) == 2
    assert "--global-batch-size 12" in capsys.readouterr().err


def test_plan_tool_fp16_and_recompute_modules(capsys):
    from tests.scripts import load_script

    plan = load_script("tools/plan.py")

    def activations(*flags) -> dict[str, float]:
        assert plan.main(["--model", "24L2048H", "--micro-batch-size", "2", "--nproc-per-node",
                          "1", "--recompute-granularity", "selective", *flags]) == 0
        out = capsys.readouterr().out
        rows = [line.split() for line in out.splitlines() if "activations, " in line]
        return {" ".join(row[1:-1]).rstrip(" *"): float(row[-1]) for row in rows}, out

    bf16, _ = activations("--bf16")
    fp16, out = activations("--fp16")
    assert fp16 == bf16 and "weights (fp16)" in out  # the same bytes
    both, out = activations("--bf16", "--recompute-modules", "core_attn", "mlp")
    assert "selective recompute (core_attn, mlp)" in out
    assert both["selective recompute (core_attn, mlp)"] < bf16["selective recompute (core_attn)"]
    assert both["no recompute"] == bf16["no recompute"]
    with pytest.raises(SystemExit):  # argparse: one precision
        plan.main(["--model", "tiny-8l", "--bf16", "--fp16"])


def test_planner_runs_without_torch(repo_root):
    """Planning needs only the configuration: a login node without torch can run it (the
    layer-implementation check once pulled torch in through megastack.model)."""
    no_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                "runpy.run_path('tools/plan.py', run_name='__main__')")
    result = subprocess.run(
        [sys.executable, "-c", no_torch, "tools/plan.py", "--model", "llama2-7b",
         "--tensor-model-parallel-size", "2", "--nnodes", "2", "--transformer-impl", "local",
         "--sequence-parallel", "--global-batch-size", "16"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo_root)})
    assert "ModuleNotFoundError" not in result.stderr and "import of torch" not in result.stderr
    # The sequence-parallel check ran (and refused the local layers) without torch.
    assert result.returncode == 2, result.stderr
    assert "--sequence-parallel" in result.stderr and "transformer_engine" in result.stderr


def test_plan_tool_help_example_and_token_flags(capsys):
    """The help's growth example runs as written (it ended in '...'); a small-phase token
    count without the budget was accepted and then summarised nothing."""
    from tests.scripts import load_script

    plan = load_script("tools/plan.py")
    example = plan.__doc__.split("all three phases:\n")[1].split("\n\n")[0]
    argv = example.replace("\\\n", " ").split()[2:]  # drop "python tools/plan.py"
    assert plan.main([a.strip('"') for a in argv]) == 0
    assert "small model 20,000,000,000 tokens before growth" in capsys.readouterr().out
    assert plan.main(["--model", "tiny-8l", "--small-train-tokens", "20B"]) == 2
    assert "--small-train-tokens needs --train-tokens" in capsys.readouterr().err
