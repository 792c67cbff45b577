"""--fp16 with megatron-core's loss scaling: skipped updates on overflow, the scale in
checkpoints, and losses that follow fp32 training."""

import pytest
import torch

from tests.training import in_process

GBS = 4
BASE = ["--model", "tiny-2l", "--mock-data", "--micro-batch-size", "2", "--global-batch-size",
        str(GBS), "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1",
        "--lr", "1e-3", "--lr-decay-style", "cosine", "--train-iters", "8"]
# Gradients scaled by 2**24 overflow fp16 in the tiny model's backward; halving at every
# overflow (hysteresis 1) brings the scale down within a few iterations.
DYNAMIC = ["--fp16", "--initial-loss-scale", str(2 ** 24), "--hysteresis", "1"]


pytestmark = pytest.mark.usefixtures("one_process")


def _train(argv):
    return in_process.train(BASE + argv)


def _records(trainer):
    return {m["iteration"]: m for m in trainer.state.history if "lm loss" in m}


def test_overflow_skips_the_update_and_halves_the_scale(tmp_path):
    straight = _train(DYNAMIC)
    assert {p.dtype for m in straight.chunks for p in m.parameters()} == {torch.float16}
    records = _records(straight)
    assert records[1]["skipped iterations"] == 1 and records[1]["loss scale"] == 2 ** 23
    skipped = [it for it, r in records.items() if r["skipped iterations"]]
    updated = [it for it in records if it not in skipped]
    assert len(updated) >= 4, records
    # A skipped iteration's loss is left out of the average (here: the whole interval).
    assert all(records[it]["lm loss"] != records[it]["lm loss"] for it in skipped)  # NaN
    assert records[updated[-1]]["lm loss"] < records[updated[0]]["lm loss"]
    # The LR schedule advances on updates only, as Megatron-LM's.
    assert straight.scheduler.num_steps == len(updated) * GBS
    # Stopped after 4 and resumed: the loss scale comes back from the checkpoint (a fresh
    # 2**24 would skip again) and training goes on exactly.
    save = tmp_path / "ckpt"
    _train(DYNAMIC + ["--save", str(save), "--exit-interval", "4"])
    resumed = _records(_train(DYNAMIC + ["--save", str(save), "--load", str(save)]))
    assert sorted(resumed) == [5, 6, 7, 8]
    for it in resumed:
        assert resumed[it]["loss scale"] == records[it]["loss scale"]
        assert resumed[it]["skipped iterations"] == records[it]["skipped iterations"]
        if it in updated:
            assert resumed[it]["lm loss"] == pytest.approx(records[it]["lm loss"], rel=1e-5)


def test_constant_loss_scale_follows_fp32_training():
    # With megatron-core's query-key layer scaling (scores scaled down by the layer number in
    # fp16, back up in the fp32 softmax).
    trainer = _train(["--fp16", "--loss-scale", "1024", "--train-iters", "4",
                      "--apply-query-key-layer-scaling"])
    assert trainer.chunks[0].config.apply_query_key_layer_scaling
    fp16 = _records(trainer)
    fp32 = _records(_train(["--train-iters", "4"]))
    assert all(r["skipped iterations"] == 0 and r["loss scale"] == 1024 for r in fp16.values())
    for it in range(1, 5):
        assert fp16[it]["lm loss"] == pytest.approx(fp32[it]["lm loss"], abs=2e-2)
