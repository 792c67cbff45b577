"""End to end: examples/pretrain_7b_gstack.sh through all three phases at tiny size on CPU.

Runs the real recipe script, overriding its models and sizes from the environment:
  phase 1  torchrun, 4 CPU ranks (TP 2 x PP 2, gloo): tiny-2l for 3 iterations, saved;
  phase 2  tools/grow_checkpoint.py --stacking-list "0-1*4": 2 -> 8 layers, re-sharded for
           TP 2 x PP 2 with 2 interleaved chunks of 2 layers;
  phase 3  torchrun, same ranks: tiny-8l from the grown weights (fresh optimizer, LR
           re-warm-up) for 3 iterations on the rest of the small model's data stream, saved.
It needs the trainer (megastack.pretrain) and the grow tool (tools/grow_checkpoint.py).
"""

import os
import socket
import subprocess
import sys

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_recipe_env(output_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PYTHON=sys.executable, OMP_NUM_THREADS="1", NNODES="1", GPUS_PER_NODE="4",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        MODEL_SMALL="tiny-2l", MODEL_LARGE="tiny-8l", STACKING_LIST="0-1*4",
        TP="2", PP="2", SMALL_VPP_LAYERS="", LARGE_VPP_LAYERS="2",
        BF16="0", USE_TE="0", DISTRIBUTED_OPTIMIZER="1",
        SEQUENCE_PARALLEL="0",  # megatron-core's torch norms refuse it (needs TE or apex)
        MICRO_BATCH_SIZE="1", GLOBAL_BATCH_SIZE="8",
        SMALL_TRAIN_ITERS="3", LARGE_TRAIN_ITERS="3", SMALL_WARMUP_ITERS="1", LARGE_WARMUP_ITERS="1",
        MOCK_DATA="1", SAVE_INTERVAL="3", LOG_INTERVAL="1", EVAL_INTERVAL="3", EVAL_ITERS="1",
        OUTPUT_DIR=str(output_dir), GROW_WAIT_TIMEOUT="60",
        ASYNC_SAVE="1",  # checkpoints published by the async queue before a phase is done
    )
    return env


@pytest.mark.slow
def test_7b_script_runs_three_tiny_phases_on_4_cpu_ranks(repo_root, tmp_path):
    env = tiny_recipe_env(tmp_path)
    script = str(repo_root / "examples" / "pretrain_7b_gstack.sh")

    plan = subprocess.run(["bash", script, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "world 4 = TP 2 x PP 2 x DP 1; 4 layers per stage, 2 virtual chunks of 2 layers" in plan.stdout

    run = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    log = run.stdout[-6000:] + run.stderr[-6000:]
    assert run.returncode == 0, log
    for phase in ("small", "grow", "large"):
        assert (tmp_path / f".{phase}.done").exists(), log
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "small" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (ckpts / "grown").is_dir()
    assert (ckpts / "large" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    # One data stream: the grown model goes on from the small model's 3 x 8 samples (with
    # --finetune it would start over at sample 0 and see them again).
    from megatron.core import dist_checkpointing

    def consumed(phase):
        common = dist_checkpointing.load_common_state_dict(str(ckpts / phase / "iter_0000003"))
        return common["consumed_train_samples"]

    assert (consumed("small"), consumed("large")) == (24, 48)

    # Rerunning skips every finished phase.
    again = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already done: skipping") == 3


@pytest.mark.slow
def test_a_phase_stopped_early_is_resumed_not_marked_done(repo_root, tmp_path):
    """--exit-duration-in-mins stops a phase cleanly (exit 0): the recipe marked it done and
    grew from a half-trained model. Also: a relative OUTPUT_DIR (from another directory than
    the repo root, where the trainer runs) kept markers and checkpoints apart; G_random with
    its growth mask reaches the large phase."""
    env = tiny_recipe_env("out")  # relative to cwd=tmp_path
    env.update(GPUS_PER_NODE="1", TP="1", PP="1", LARGE_VPP_LAYERS="", GLOBAL_BATCH_SIZE="2",
               DISTRIBUTED_OPTIMIZER="0", EXTRA_TRAIN_ARGS="--exit-duration-in-mins 1e-9",
               GROWTH_OPERATOR="random", GROWTH_MASK_ITERS="2")
    script = str(repo_root / "examples" / "pretrain_7b_gstack.sh")
    out = tmp_path / "out"

    stopped = subprocess.run(["bash", script], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert stopped.returncode == 75, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "small phase stopped at iteration 1 of 3" in stopped.stderr
    assert not (out / ".small.done").exists()
    assert (out / "checkpoints" / "small" / "latest_checkpointed_iteration.txt").read_text() == "1"

    env["EXTRA_TRAIN_ARGS"] = ""
    resumed = subprocess.run(["bash", script], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming at iteration 1" in resumed.stdout + resumed.stderr
    for phase in ("small", "grow", "large"):
        assert (out / f".{phase}.done").exists()
    assert (out / "checkpoints" / "large" / "latest_checkpointed_iteration.txt").read_text() == "3"
    assert "growth mask at 1 after 2 iterations" in resumed.stdout + resumed.stderr
