"""--rampup-batch-size: the batch schedule, and training, resuming and growing under a ramp."""

import pytest
import torch

from megastack.training.batch_schedule import BatchSchedule
from tests.training import in_process

# Ramp from 2 to 8 sequences in steps of 2 over 12 samples: 12 / 3 = 4 samples per step, so
# the batch is 2 from 0 consumed samples, 4 from 4, 6 from 8 and 8 after 12 (as Megatron-LM).
RAMP = ["--global-batch-size", "8", "--rampup-batch-size", "2", "2", "12"]
SEQ = 64  # tiny-2l
RAMP_BATCHES = [2, 2, 4, 6, 8, 8, 8]  # 7 iterations, 38 samples: the whole batches in 40
BASE = ["--model", "tiny-2l", "--mock-data", "--micro-batch-size", "2", *RAMP,
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1", "--lr", "1e-3",
        "--lr-decay-style", "linear"]


pytestmark = pytest.mark.usefixtures("one_process")


def config(argv):
    trainer, _ = in_process.build(BASE + argv)  # not set up: the flags' config only
    return trainer.cfg, trainer.args


def test_schedule_follows_megatron_core_and_counts_iterations():
    batches = BatchSchedule(8, (2, 2, 12), micro_batch_size=2)
    consumed, sizes = 0, []
    for _ in range(7):
        sizes.append(batches.batch_size(consumed))
        consumed += sizes[-1]
    assert sizes == RAMP_BATCHES
    assert [batches.num_microbatches(c) for c in (0, 4, 8, 14)] == [1, 2, 3, 4]
    assert [batches.samples_after(n) for n in (0, 2, 4, 7)] == [0, 4, 14, 38]
    assert batches.iterations_within(40) == 7 and batches.iterations_within(37) == 6
    assert batches.iterations_to_reach(9) == 4 and batches.iterations_to_reach(38) == 7
    assert batches.iterations_nearest(13) == 4 and batches.iterations_nearest(10) == 3
    assert batches.samples_between(2, 3) == 18  # batches 4 + 6 + 8
    constant = BatchSchedule(8)
    assert constant.samples_after(5) == 40 and constant.iterations_within(47) == 5


def test_run_length_and_lr_schedule_count_the_ramp():
    cfg, _ = config(["--train-samples", "40", "--lr-warmup-samples", "9",
                     "--lr-decay-samples", "30"])
    # 9 samples: nearest boundary is 8 (3 iterations); 30 samples: 30 after 6 iterations.
    assert (cfg.train.train_iters, cfg.train.lr_warmup_iters, cfg.train.lr_decay_iters) == (7, 3, 6)
    cfg, _ = config(["--train-tokens", str(20 * SEQ), "--lr-warmup-fraction", "0.25"])
    # 20 samples take 5 iterations (22 samples); a quarter of their 22 samples is nearest to 4.
    assert (cfg.train.train_iters, cfg.train.lr_warmup_iters) == (5, 2)


def _train(argv):
    return in_process.train(BASE + argv)


def _per_iteration(trainer, key):
    return {m["iteration"]: m[key] for m in trainer.state.history if key in m}


def test_training_ramps_up_and_resumes_mid_ramp(tmp_path):
    straight = _train(["--train-samples", "40"])
    assert list(_per_iteration(straight, "global batch size").values()) == RAMP_BATCHES
    state = straight.state
    assert state.consumed_train_samples == 38
    seq = straight.cfg.model.seq_length
    assert state.floating_point_operations == pytest.approx(
        straight.cfg.model.flops_per_token() * 38 * seq)
    # The linear decay spans the samples actually trained: it ends at --min-lr (0) exactly.
    assert straight.scheduler.num_steps == 38
    assert straight.optimizer.param_groups[0]["lr"] == 0.0
    # Stopped mid-ramp (after batches 2, 2, 4) and resumed: the batches, the data and the loss
    # go on as in the straight run.
    save = tmp_path / "ckpt"
    first = _train(["--train-samples", "40", "--save", str(save), "--exit-interval", "3"])
    assert first.state.iteration == 3
    # A longer run would decay the LR over other samples: named in samples (the iterations
    # have different batches).
    trainer, tokenizer = in_process.build(BASE + ["--train-samples", "48", "--load", str(save)])
    with pytest.raises(ValueError, match=r"LR decay\): checkpoint 38 samples, now 46 samples\)"):
        trainer.setup(tokenizer)
    resumed = _train(["--train-samples", "40", "--save", str(save), "--load", str(save)])
    assert list(_per_iteration(resumed, "global batch size").values()) == RAMP_BATCHES[3:]
    assert resumed.state.consumed_train_samples == 38
    straight_loss = _per_iteration(straight, "lm loss")
    for it, loss in _per_iteration(resumed, "lm loss").items():
        assert loss == pytest.approx(straight_loss[it], rel=1e-5)


def test_growth_point_and_large_phase_schedule_follow_the_ramp(tmp_path):
    from megastack.training.growth_run import _GrownTrainer, _phase_configs, growth_point_iterations

    cfg, args = config(["--train-samples", "40", "--save", str(tmp_path),
                        "--grow-at-tokens", str(9 * SEQ), "--stacking-list", "0-1*2",
                        "--lr-warmup-iters-after-growth", "2"])
    # 9 samples are first reached after 4 iterations (2 + 2 + 4 + 6 = 14 samples).
    assert growth_point_iterations(cfg) == 4
    small, large = _phase_configs(cfg, 4)
    trainer = _GrownTrainer(large, args, grown_at_iteration=4, datasets_cfg=small)
    trainer.batches = large.train.batch_schedule()
    trainer.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = trainer._build_scheduler()
    # From the growth point every batch is 8: warmup 2 x 8 and decay over the 3 remaining
    # iterations' 24 samples (counted from iteration 0, the ramp would make them 4 and 14).
    assert (scheduler.lr_warmup_steps, scheduler.lr_decay_steps) == (16, 24)
