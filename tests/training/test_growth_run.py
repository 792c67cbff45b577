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


def _grow_in_process(tmp_path, name, *flags, operator="random"):
    from megastack.pretrain import build_tokenizer_from_args
    from megastack.training.arguments import build_pretrain_config, parse_args
    from megastack.training.growth_run import GrowthRun

    args = parse_args(["--model", "tiny-2l", "--mock-data", "--train-iters", "6",
                       "--global-batch-size", "2", "--log-interval", "1", "--eval-interval", "3",
                       "--eval-iters", "1", "--save", str(tmp_path / name),
                       "--grow-at-tokens", "256", "--stacking-list", "0,1,0,1",
                       "--growth-operator", operator, *flags])
    tokenizer = build_tokenizer_from_args(args)
    metrics = tmp_path / f"{name}.jsonl"
    GrowthRun(build_pretrain_config(args, tokenizer.vocab_size), args, tokenizer,
              metrics_file=str(metrics)).setup().train()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["growth"]: r["lm loss validation"] for r in records if "growth" in r}


def test_growth_mask_starts_g_random_as_the_small_model(one_process, tmp_path):
    """--growth-mask-iters (MSG): the fresh layers are the identity at the growth point, so the
    validation loss after growth is the one before; unmasked G_random changes it."""
    masked = _grow_in_process(tmp_path, "masked", "--growth-mask-iters", "2")
    assert masked["after"] == pytest.approx(masked["before"], abs=1e-6)
    plain = _grow_in_process(tmp_path, "plain")
    assert abs(plain["after"] - plain["before"]) > 1e-3


WIDEN = ("--target-hidden-size", "128", "--target-num-attention-heads", "8",
         "--target-num-query-groups", "4", "--target-ffn-hidden-size", "352")


def _grown_model_record(save) -> dict:
    from megatron.core import dist_checkpointing

    from megastack.checkpoint.training_checkpoint import resolve_checkpoint

    return dist_checkpointing.load_common_state_dict(resolve_checkpoint(str(save)))["megastack"]["model"]


@pytest.mark.parametrize("name, operator, flags", [
    ("zero-direct", "zero", WIDEN),  # function preserving as it is
    ("random-masked", "random", WIDEN + ("--growth-width-operator", "random",
                                         "--growth-mask-iters", "2")),
])
def test_width_growth_in_one_run_starts_as_the_small_model(one_process, tmp_path, name,
                                                           operator, flags):
    """--target-hidden-size etc.: the run grows 64 -> 128 hidden with the depth, and with
    function-preserving operators (or the mask) the loss right after growth is the one before."""
    losses = _grow_in_process(tmp_path, name, *flags, operator=operator)
    assert losses["after"] == pytest.approx(losses["before"], abs=1e-5)
    record = _grown_model_record(tmp_path / name)
    assert (record["num_layers"], record["hidden_size"], record["num_attention_heads"],
            record["num_query_groups"], record["ffn_hidden_size"]) == (4, 128, 8, 4, 352)


def test_growth_mask_ramps_and_then_leaves_the_model(megatron_world):
    from megastack.config import ModelConfig, ParallelConfig
    from megastack.growth.mask import GrowthMask
    from megastack.model import build_model_chunks

    import torch

    cfg = ModelConfig.from_name("tiny-4l")
    model = build_model_chunks(cfg, ParallelConfig(), seed=0)[0].eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, cfg.seq_length))
    positions = torch.arange(cfg.seq_length).unsqueeze(0)
    with torch.no_grad():
        full = model(tokens, positions, None)
        mask = GrowthMask([model], layers=[2, 3], ramp_iters=4)
        mask.update(0)
        assert mask.active and mask.value == 0.0
        identity = model(tokens, positions, None)
        mask.update(2)
        half = model(tokens, positions, None)
        mask.update(4)
        assert not mask.active and mask.value == 1.0
        assert torch.equal(model(tokens, positions, None), full)
        # Layers 2 and 3 as the identity: what a 2-layer model of layers 0 and 1 computes.
        layers = model.decoder.layers
        model.decoder.layers = layers[:2]
        assert torch.allclose(model(tokens, positions, None), identity, atol=1e-5)
        model.decoder.layers = layers
    assert not torch.allclose(half, identity) and not torch.allclose(half, full)


def test_learned_width_growth_in_one_run(one_process, tmp_path):
    """G_learn fits depth and width maps together (megastack.growth.learn) at the growth point."""
    losses = _grow_in_process(tmp_path, "learn", *WIDEN, "--learn-steps", "2", operator="learn")
    assert set(losses) == {"before", "after"}
    assert _grown_model_record(tmp_path / "learn")["hidden_size"] == 128
