"""Growth in one run: small model, grow, continue; logs and TensorBoard scalars."""

import json

import pytest

from tests.training.launch import read_metrics, run_pretrain

pytestmark = pytest.mark.slow


def test_grow_in_one_run_with_tensorboard(tmp_path):
    save, tb, metrics = tmp_path / "ckpt", tmp_path / "tb", tmp_path / "m.jsonl"
    run_pretrain(["--model", "tiny-2l", "--mock-data", "--train-iters", "8",
                  "--global-batch-size", "4", "--micro-batch-size", "2", "--log-interval", "1",
                  "--eval-interval", "4", "--eval-iters", "2", "--save", str(save),
                  "--tensorboard-dir", str(tb), "--grow-at-tokens", "1024",
                  "--stacking-list", "0-1*2", "--target-num-layers", "4",
                  "--lr-after-growth", "5e-4", "--lr-warmup-iters-after-growth", "2",
                  "--log-progress"],
                 nproc=1, metrics=metrics)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    small = read_metrics(metrics, phase="small")
    large = read_metrics(metrics, phase="large")
    assert sorted(small) == [1, 2, 3, 4] and sorted(large) == [5, 6, 7, 8]
    growth = {r["growth"]: r["lm loss validation"] for r in records if "growth" in r}
    assert set(growth) == {"before", "after"}
    # G_stack is not function preserving: the grown model computes something else.
    assert growth["before"] != growth["after"]
    # Fresh LR schedule after growth: warmup to the new peak over 2 iterations.
    lrs = read_metrics(metrics, "learning-rate", phase="large")
    assert lrs[5] == pytest.approx(2.5e-4) and lrs[6] == pytest.approx(5e-4)
    assert (save / "grown" / "iter_0000000" / "metadata.json").exists()
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "8"
    # One progress.txt for both phases; the FLOPs count the small model's 4 iterations and the
    # grown model's 4.
    progress = [line.split("\t") for line in (save / "progress.txt").read_text().splitlines()]
    assert [(f[3], f[4]) for f in progress] == [("Starting job", "Iteration: 0"),
                                                ("Saved checkpoint", "Iteration: 4"),
                                                ("Saved checkpoint", "Iteration: 8")]
    from megastack.config import PRESETS, ModelConfig

    tokens_per_step = 4 * 64
    flops = 4 * tokens_per_step * (ModelConfig(**PRESETS["tiny-2l"]).flops_per_token()
                                   + ModelConfig(**{**PRESETS["tiny-2l"], "num_layers": 4})
                                   .flops_per_token())
    assert float(progress[-1][7].split(": ")[1]) == pytest.approx(flops, rel=1e-3)
    # The test split once, where the run ends, as in Megatron-LM (not at the growth point).
    assert [(r.get("phase"), r["iteration"]) for r in records if "lm loss test" in r] == [
        ("large", 8)]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb)).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"lm loss", "learning-rate", "grad-norm", "lm loss validation",
            "lm loss validation ppl", "tokens-per-sec"} <= tags
    steps = [e.step for e in acc.Scalars("lm loss")]
    assert steps == list(range(1, 9))
    # One point per tag and step and phase: the evaluation records repeated "consumed tokens"
    # and the "before growth" record the small model's last validation loss. At the growth
    # step (4) the small phase's point and the grown model's "after growth" one are both there.
    assert sorted(e.step for e in acc.Scalars("consumed tokens")) == [1, 2, 3, 4, 4, 5, 6, 7, 8]
    assert sorted(e.step for e in acc.Scalars("lm loss validation")) == [4, 4, 8]


def test_grow_in_one_run_with_learned_maps(tmp_path):
    """G_learn: the maps train on the next batches (counted as consumed), then training goes on."""
    metrics = tmp_path / "m.jsonl"
    run_pretrain(["--model", "tiny-2l", "--mock-data", "--train-iters", "4",
                  "--global-batch-size", "4", "--micro-batch-size", "2", "--log-interval", "1",
                  "--eval-interval", "100", "--eval-iters", "1", "--save", str(tmp_path / "ckpt"),
                  "--grow-at-tokens", "512", "--stacking-list", "0,1,0,1",
                  "--target-num-layers", "4", "--growth-operator", "learn", "--learn-steps", "3"],
                 nproc=1, metrics=metrics)
    consumed = read_metrics(metrics, "consumed tokens", phase="large")
    # 2 small iterations (8 samples) + 3 map steps x 2 samples, then 4 samples per iteration.
    assert consumed[3] == (8 + 6 + 4) * 64
    assert sorted(read_metrics(metrics, phase="large")) == [3, 4]


def test_learn_operator_needs_one_rank(monkeypatch):
    from megastack.training.arguments import build_pretrain_config, parse_args

    monkeypatch.setenv("WORLD_SIZE", "2")
    args = parse_args(["--model", "tiny-2l", "--mock-data", "--train-iters", "4", "--save", "x",
                       "--grow-at-tokens", "256", "--stacking-list", "0,1,0,1",
                       "--target-num-layers", "4", "--growth-operator", "learn"])
    with pytest.raises(ValueError, match="--growth-operator learn"):
        build_pretrain_config(args, vocab_size=None)


def test_eval_interval_zero_means_no_evaluation_in_a_growth_run(tmp_path):
    """The growth point evaluated before and after growing even with evaluation off."""
    metrics = tmp_path / "m.jsonl"
    run_pretrain(["--model", "tiny-2l", "--mock-data", "--train-iters", "4",
                  "--global-batch-size", "4", "--micro-batch-size", "2", "--log-interval", "1",
                  "--eval-interval", "0", "--save", str(tmp_path / "ckpt"),
                  "--grow-at-tokens", "512", "--stacking-list", "0-1*2"], nproc=1, metrics=metrics)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert sorted(read_metrics(metrics)) == [1, 2, 3, 4]
    assert not [r for r in records if "lm loss validation" in r or "lm loss test" in r]


def test_out_of_time_at_the_growth_point_stops_before_growing(tmp_path):
    """--exit-duration-in-mins reached in the small phase: the run grew and trained on."""
    save, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    proc = run_pretrain(["--model", "tiny-2l", "--mock-data", "--train-iters", "4",
                         "--global-batch-size", "4", "--micro-batch-size", "2",
                         "--log-interval", "1", "--eval-interval", "0", "--save", str(save),
                         "--grow-at-tokens", "512", "--stacking-list", "0-1*2",
                         "--exit-duration-in-mins", "1e-9"], nproc=1, metrics=metrics)
    assert sorted(read_metrics(metrics, phase="small")) == [1]
    assert read_metrics(metrics, phase="large") == {}
    assert not (save / "grown").exists()
    assert (save / "small" / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert "exiting at iteration 1" in proc.stdout + proc.stderr
