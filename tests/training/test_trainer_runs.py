"""Short in-process training runs (one gloo process, tiny-2l, mock data) of Trainer fixes."""

import json
import logging
import math

import pytest
import torch

from megastack.checkpoint import training_checkpoint as ckpt
from megastack.training.arguments import build_pretrain_config, parse_args
from megastack.training.trainer import Trainer, TrainingDiverged
from tests.training import in_process

BASE = ["--model", "tiny-2l", "--mock-data", "--micro-batch-size", "2", "--global-batch-size",
        "4", "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1",
        "--lr", "1e-3", "--lr-decay-style", "cosine"]


pytestmark = pytest.mark.usefixtures("one_process")


def make_trainer(argv, **kwargs):
    return in_process.build(BASE + argv, **kwargs)


def run(argv, **kwargs):
    return in_process.train(BASE + argv, **kwargs)


def train_losses(trainer):
    return {m["iteration"]: m["lm loss"] for m in trainer.state.history if "lm loss" in m}


# ---- 1: `--save D --load D` on a first launch ------------------------------------------------
@pytest.mark.parametrize("make_dir", [False, True])
def test_first_launch_with_load_equal_to_save_trains_from_scratch(tmp_path, caplog, make_dir):
    root = tmp_path / "ckpt"
    if make_dir:
        root.mkdir()
    with caplog.at_level(logging.WARNING):
        trainer = run(["--train-iters", "2", "--save", str(root), "--load", str(root)])
    assert trainer.state.iteration == 2
    assert "training from scratch" in caplog.text
    assert ckpt.read_latest_iteration(str(root)) == 2


def test_load_naming_a_missing_iteration_still_fails(tmp_path):
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / ckpt.LATEST_FILE).write_text("7")
    trainer, tokenizer = make_trainer(["--train-iters", "2", "--load", str(root)])
    with pytest.raises(ValueError, match="names iteration 7"):
        trainer.setup(tokenizer)


def test_finetune_from_an_empty_load_fails(tmp_path):
    trainer, tokenizer = make_trainer(["--train-iters", "2", "--load", str(tmp_path),
                                       "--finetune"])
    with pytest.raises(ValueError, match="--finetune: no checkpoint"):
        trainer.setup(tokenizer)


# ---- 3: full activation recomputation ------------------------------------------------------
def test_full_recompute_reaches_the_transformer_config():
    from megastack.config import to_transformer_config

    cfg = build_pretrain_config(parse_args(BASE + ["--train-iters", "2",
                                                   "--recompute-granularity", "full",
                                                   "--recompute-method", "block",
                                                   "--recompute-num-layers", "2"]),
                                vocab_size=None)
    t = cfg.train
    tc = to_transformer_config(cfg.model, cfg.parallel, recompute_granularity=t.recompute_granularity,
                               recompute_method=t.recompute_method,
                               recompute_num_layers=t.recompute_num_layers)
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == \
        ("full", "block", 2)


def test_recomputation_trains_with_the_same_losses():
    """Full and selective recompute (on CPU too: the recomputed forward runs inside autograd's
    backward, which megastack's CPU bridge covers) change memory, not the losses."""
    plain = train_losses(run(["--train-iters", "2"]))
    for flags in (["full", "--recompute-method", "uniform", "--recompute-num-layers", "1"],
                  ["full", "--recompute-method", "block", "--recompute-num-layers", "2"],
                  ["selective"], ["selective", "--recompute-modules", "core_attn", "mlp"]):
        trainer = run(["--train-iters", "2", "--recompute-granularity", *flags])
        assert train_losses(trainer) == pytest.approx(plain, rel=1e-6), flags
        layer = trainer.chunks[0].decoder.layers[0]
        assert layer.recompute_mlp == ("mlp" in flags)


def learning_rates(trainer):
    return {m["iteration"]: m["learning-rate"] for m in trainer.state.history
            if "learning-rate" in m}


# ---- 4: WSD (warmup-stable-decay) LR schedule --------------------------------------------
@pytest.mark.parametrize("style", ["linear", "exponential"])
def test_wsd_schedule(style):
    lr, min_lr = 1e-3, 1e-4
    trainer = run(["--train-iters", "6", "--lr-decay-style", "WSD", "--min-lr", str(min_lr),
                   "--lr-warmup-iters", "2", "--lr-wsd-decay-iters", "2",
                   "--lr-wsd-decay-style", style])
    # warmup to iteration 2, stable to 4, then 2 iterations of annealing to --min-lr
    half = {"linear": 0.5, "exponential": 2 * 0.5 ** 0.5 - 1}[style]
    expected = {1: lr / 2, 2: lr, 3: lr, 4: lr, 5: min_lr + half * (lr - min_lr), 6: min_lr}
    got = learning_rates(trainer)
    assert got.keys() == expected.keys()
    for it, value in expected.items():
        assert got[it] == pytest.approx(value, rel=1e-6), it


# ---- 5: a resume with other schedule flags than the checkpoint's ---------------------------
def test_resume_with_a_changed_schedule_needs_a_choice(tmp_path):
    root = str(tmp_path / "ckpt")
    run(["--train-iters", "2", "--save", root])
    # Same flags: resumes silently.
    assert run(["--train-iters", "2", "--save", root, "--load", root]).state.iteration == 2
    longer = ["--train-iters", "4", "--save", root, "--load", root]
    trainer, tokenizer = make_trainer(longer + ["--lr", "2e-3"])
    with pytest.raises(ValueError) as e:
        trainer.setup(tokenizer)
    msg = str(e.value)
    for needle in ("--train-iters", "--lr: checkpoint 0.001, now 0.002",
                   "--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"):
        assert needle in msg
    assert ckpt.read_latest_iteration(root) == 2  # nothing lost

    # The checkpoint's schedule: its cosine ended at iteration 2, so the LR stays at --min-lr 0.
    kept = learning_rates(run(longer + ["--use-checkpoint-opt_param-scheduler"]))
    assert kept == {3: 0.0, 4: 0.0}
    ckpt.write_latest(root, 2)
    # The new schedule, continued from the checkpoint's step: cosine over 4 iterations.
    extended = learning_rates(run(longer + ["--override-opt-param-scheduler"]))
    assert extended[3] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert extended[4] == 0.0


def test_finetune_takes_a_fresh_schedule(tmp_path):
    root = str(tmp_path / "ckpt")
    run(["--train-iters", "2", "--save", root])
    trainer = run(["--train-iters", "3", "--lr", "2e-3", "--load", root, "--finetune"])
    assert trainer.state.iteration == 3
    assert learning_rates(trainer)[1] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi / 3)))


@pytest.mark.parametrize("finetune", [False, True])
def test_load_of_another_architecture_names_the_flags(tmp_path, finetune):
    """Before the check, megatron-core failed with a CheckpointingException about one tensor."""
    root = str(tmp_path / "ckpt")
    run(["--train-iters", "1", "--save", root])  # tiny-2l
    other = ["--train-iters", "1", "--load", root, "--num-layers", "3", "--swiglu",
             "--disable-bias-linear", "--normalization", "LayerNorm"] + (
        ["--finetune"] if finetune else [])
    trainer, tokenizer = make_trainer(other)
    with pytest.raises(ValueError) as e:
        trainer.setup(tokenizer)
    msg = str(e.value)
    assert f"--load {root}" in msg and "--num-layers: 2 vs 3" in msg
    assert "--normalization: 'RMSNorm' vs 'LayerNorm'" in msg
    assert "--swiglu" not in msg  # the same in both
    # Sequence length and RoPE base may change (context extension): those load.
    trainer = run(["--train-iters", "1", "--load", root, "--finetune", "--seq-length", "32",
                   "--rotary-base", "500000"])
    assert trainer.state.iteration == 1


# ---- 6: throughput excludes evaluation and checkpoint saving -------------------------------
def test_logged_iteration_time_excludes_eval_and_save(tmp_path):
    import time

    delay = 1.0  # far above a tiny-2l step on CPU (tens of milliseconds)
    trainer, tokenizer = make_trainer(["--train-iters", "4", "--eval-interval", "2",
                                       "--save", str(tmp_path), "--save-interval", "3"])
    trainer.setup(tokenizer)
    real_evaluate = trainer.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(delay)
        return real_evaluate(*args, **kwargs)

    def slow_save(*args, **kwargs):  # stands in for writing a large checkpoint
        time.sleep(delay)
        trainer.last_saved_iteration = trainer.state.iteration

    trainer.evaluate, trainer.save = slow_evaluate, slow_save
    trainer.train()
    times = {m["iteration"]: m["iteration-time"] for m in trainer.state.history
             if "iteration-time" in m}
    assert set(times) == {1, 2, 3, 4}
    # Iteration 3 follows the evaluation at 2, iteration 4 the save at 3.
    assert times[3] < delay / 2 and times[4] < delay / 2, times


# ---- 7: --eval-interval 0 turns evaluation off ---------------------------------------------
def test_eval_interval_zero_means_no_evaluation():
    trainer = run(["--train-iters", "2", "--eval-interval", "0"])
    assert trainer.state.iteration == 2
    assert not any("lm loss validation" in m for m in trainer.state.history)


# ---- document boundaries: --reset-attention-mask, --reset-position-ids, --eod-mask-loss -----
def test_document_boundary_flags_reach_the_batch_and_the_loss():
    """Megatron-LM's flags were refused; megastack's dataset code took them but the batch
    dropped the attention mask and the model never saw one."""
    flags = ["--train-iters", "1", "--reset-attention-mask", "--reset-position-ids",
             "--eod-mask-loss"]
    trainer, tokenizer = make_trainer(flags)
    trainer.setup(tokenizer)
    batch = next(trainer.train_iterators)
    trainer.close()
    tokens, mask = batch["tokens"], batch["attention_mask"]
    s = tokens.shape[1]
    eod = tokens == tokenizer.eod
    assert eod[:, :-1].any(), "mock documents should end inside a sequence"
    assert torch.all(batch["loss_mask"][eod] == 0)
    causal_masked = ~torch.tril(torch.ones(s, s, dtype=torch.bool))
    assert mask.shape == (tokens.shape[0], 1, s, s)
    assert (mask[:, 0] & ~causal_masked).any()  # blocked across a boundary, unlike causal
    b, i = map(int, eod[:, :-1].nonzero()[0])
    assert batch["position_ids"][b, i + 1] == 0  # positions restart after the EOD

    # The mask must reach the model: same data and weights, another loss (CPU runs are
    # deterministic, so any difference is the mask's).
    masked = train_losses(run(["--train-iters", "1", "--reset-attention-mask"]))[1]
    causal = train_losses(run(["--train-iters", "1"]))[1]
    assert masked != causal


# ---- Megatron-LM's flags for stopping and its checkpoints' sample count ---------------------
def test_exit_duration_saves_and_stops_without_a_final_evaluation(tmp_path):
    root = str(tmp_path / "ckpt")
    trainer = run(["--train-iters", "4", "--eval-interval", "2", "--save", root,
                   "--exit-duration-in-mins", "1e-9"])
    assert trainer.state.iteration == 1
    assert ckpt.read_latest_iteration(root) == 1
    assert not any("lm loss validation" in m for m in trainer.state.history)


def _common_state(checkpoint_dir) -> dict:
    return torch.load(checkpoint_dir / "common.pt", weights_only=False)


def _rewrite_as_megatron_lm(checkpoint_dir, drop=("megastack",), **args) -> None:
    """A megastack checkpoint's common state laid out as Megatron-LM writes it: without the
    keys in `drop`, with `args` as its saved argparse namespace."""
    import argparse

    common = {k: v for k, v in _common_state(checkpoint_dir).items() if k not in drop}
    common["args"] = argparse.Namespace(**args)
    torch.save(common, checkpoint_dir / "common.pt")


def test_resume_reads_the_sample_count_from_megatron_lm_args(tmp_path):
    """Megatron-LM stores consumed samples in the checkpoint's args, not at the top level."""
    root = tmp_path / "ckpt"
    run(["--train-iters", "2", "--save", str(root)])
    consumed = _common_state(root / "iter_0000002")["consumed_train_samples"]
    _rewrite_as_megatron_lm(root / "iter_0000002", drop=("consumed_train_samples",),
                            consumed_train_samples=consumed)
    trainer, tokenizer = make_trainer(["--train-iters", "2", "--load", str(root)])
    trainer.setup(tokenizer)
    assert (trainer.state.iteration, trainer.state.consumed_train_samples) == (2, consumed)
    trainer.close()


def test_megatron_lm_vocabulary_padding_is_named(tmp_path):
    """Megatron-LM pads to divisible_by x TP: a checkpoint saved at TP 2 failed on a bare
    tensor-shape error here; the message gives the --make-vocab-size-divisible-by to use."""
    root = tmp_path / "ckpt"
    run(["--train-iters", "1", "--save", str(root)])
    vocab = _common_state(root / "iter_0000001")["megastack"]["model"]["vocab_size"]
    _rewrite_as_megatron_lm(root / "iter_0000001", padded_vocab_size=vocab + 128,
                            tensor_model_parallel_size=2, make_vocab_size_divisible_by=128)
    trainer, tokenizer = make_trainer(["--train-iters", "1", "--load", str(root)])
    with pytest.raises(ValueError, match="Relaunch with --make-vocab-size-divisible-by 256"):
        trainer.setup(tokenizer)


def test_test_split_is_evaluated_once_where_training_ends():
    """Megatron-LM evaluates the test split after training; it was built here and never read."""
    trainer = run(["--train-iters", "4", "--eval-interval", "2"])
    tests = [m for m in trainer.state.history if "lm loss test" in m]
    assert [m["iteration"] for m in tests] == [4]
    assert math.isfinite(tests[0]["lm loss test"])
    assert tests[0]["lm loss test ppl"] == pytest.approx(math.exp(tests[0]["lm loss test"]))
    assert not any("lm loss test" in m for m in run(["--train-iters", "2", "--eval-interval",
                                                      "0"]).state.history)


def test_distributed_timeout_reaches_the_process_group(monkeypatch):
    """--distributed-timeout-minutes bounds the collectives (rank 0 building dataset indices or
    writing a checkpoint while the others wait at a barrier)."""
    import datetime

    import torch.distributed as dist

    from megastack import runtime
    from megastack.runtime import distributed

    seen = {}

    class Stop(Exception):
        pass

    def fake_initialize(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(runtime, "initialize", fake_initialize)
    trainer, tokenizer = make_trainer(["--train-iters", "1", "--distributed-timeout-minutes", "45"])
    with pytest.raises(Stop):
        trainer.setup(tokenizer)
    assert seen["timeout_minutes"] == 45

    groups = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: groups.update(kwargs))
    distributed.init_process_group(45)
    assert groups["timeout"] == datetime.timedelta(minutes=45)


def test_use_checkpoint_args_takes_the_model_from_the_checkpoint(tmp_path):
    """Megatron-LM's --use-checkpoint-args: resume (or train a grown checkpoint) without
    repeating its model flags; flags given on the command line still win."""
    from megastack.pretrain import build_tokenizer_from_args

    root = str(tmp_path / "ckpt")
    saved = run(["--train-iters", "1", "--save", root, "--num-layers", "3"]).cfg.model
    no_model = [a for a in BASE if a not in ("--model", "tiny-2l")]
    argv = no_model + ["--use-checkpoint-args", "--load", root, "--train-iters", "2",
                       "--override-opt_param-scheduler"]
    args = parse_args(argv)
    cfg = build_pretrain_config(args, build_tokenizer_from_args(args).vocab_size)
    assert cfg.model == saved and cfg.model.num_layers == 3
    trainer = Trainer(cfg, args)
    trainer.setup(build_tokenizer_from_args(args))
    assert trainer.state.iteration == 1  # loaded: the architecture matched
    trainer.close()
    args = parse_args(argv + ["--seq-length", "32"])
    assert build_pretrain_config(args, None).model.seq_length == 32
    with pytest.raises(ValueError, match="give --model or --use-checkpoint-args, not both"):
        build_pretrain_config(parse_args(argv + ["--model", "tiny-2l"]), None)
    with pytest.raises(ValueError, match="--use-checkpoint-args needs --load"):
        build_pretrain_config(parse_args(no_model + ["--use-checkpoint-args", "--train-iters",
                                                     "1"]), None)


def test_model_record_of_a_megatron_lm_checkpoint_comes_from_its_args(tmp_path):
    from megastack.checkpoint.training_checkpoint import read_model_record

    root = tmp_path / "ckpt"
    run(["--train-iters", "1", "--save", str(root)])
    _rewrite_as_megatron_lm(root / "iter_0000001", num_layers=6, hidden_size=256,
                            num_attention_heads=8, group_query_attention=True,
                            num_query_groups=2, padded_vocab_size=50304, swiglu=True,
                            seq_length=1024, kv_channels=32)
    assert read_model_record(str(root)) == dict(
        num_layers=6, hidden_size=256, num_attention_heads=8, num_query_groups=2,
        vocab_size=50304, swiglu=True, seq_length=1024)
    with pytest.raises(ValueError, match="no checkpoint there"):
        read_model_record(str(tmp_path / "nothing"))


def test_use_mp_args_from_checkpoint_args_takes_the_saved_layout(tmp_path):
    """The layout flags come from the checkpoint: a one-rank run's record gives TP 1 over the
    command line's 2; a Megatron-LM checkpoint saved at TP 2 (args) cannot run on one rank."""
    from megastack.pretrain import build_tokenizer_from_args

    root = tmp_path / "ckpt"
    run(["--train-iters", "1", "--save", str(root)])
    no_model = [a for a in BASE if a not in ("--model", "tiny-2l")]
    argv = no_model + ["--use-checkpoint-args", "--use-mp-args-from-checkpoint-args", "--load",
                       str(root), "--train-iters", "2", "--tensor-model-parallel-size", "2"]
    args = parse_args(argv)
    cfg = build_pretrain_config(args, build_tokenizer_from_args(args).vocab_size)
    assert cfg.parallel.tensor_model_parallel_size == 1
    with pytest.raises(ValueError, match="goes with --use-checkpoint-args"):
        build_pretrain_config(parse_args(BASE + ["--use-mp-args-from-checkpoint-args", "--load",
                                                 str(root), "--train-iters", "2"]), None)
    _rewrite_as_megatron_lm(root / "iter_0000001", num_layers=4, hidden_size=64,
                            num_attention_heads=4, seq_length=64, padded_vocab_size=512,
                            tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
                            virtual_pipeline_model_parallel_size=2)
    from megastack.checkpoint.training_checkpoint import read_parallel_record

    even = {"decoder_first_pipeline_num_layers": None, "decoder_last_pipeline_num_layers": None,
            "account_for_embedding_in_pipeline_split": False,
            "account_for_loss_in_pipeline_split": False,
            "num_virtual_stages_per_pipeline_rank": None}
    assert read_parallel_record(str(root)) == {
        "tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
        "num_layers_per_virtual_pipeline_stage": 1, **even}
    with pytest.raises(ValueError, match="world size 1 is not divisible by "
                                         "--tensor-model-parallel-size 2"):
        build_pretrain_config(parse_args(argv[:-2]), None)
    _rewrite_as_megatron_lm(root / "iter_0000001", num_layers=4, hidden_size=64,
                            num_attention_heads=4, seq_length=64, padded_vocab_size=512,
                            tensor_model_parallel_size=1, pipeline_model_parallel_size=2,
                            decoder_last_pipeline_num_layers=2,
                            virtual_pipeline_model_parallel_size=2)
    assert read_parallel_record(str(root)) == {
        "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 2,
        "num_layers_per_virtual_pipeline_stage": None,
        **even, "decoder_last_pipeline_num_layers": 2, "num_virtual_stages_per_pipeline_rank": 2}


def test_resume_with_the_other_optimizer_kind_names_the_flag(tmp_path):
    """The distributed and regular optimizers save different state: loading one into the other
    failed with a KeyError from megatron-core."""
    root = str(tmp_path / "ckpt")
    run(["--train-iters", "1", "--save", root, "--use-distributed-optimizer"])
    trainer, tokenizer = make_trainer(["--train-iters", "1", "--load", root])
    with pytest.raises(ValueError) as e:
        trainer.setup(tokenizer)
    assert ("saved with --use-distributed-optimizer, and this run is without it" in str(e.value)
            and "--no-load-optim" in str(e.value))
    trainer = run(["--train-iters", "2", "--load", root, "--no-load-optim"])  # weights only
    assert trainer.state.iteration == 2


def test_overlap_grad_reduce_is_wired_into_ddp_and_the_schedules():
    """Same losses with or without overlap (test_parallel_training): check that the flag
    reached megatron-core at all."""
    trainer, tokenizer = make_trainer(["--train-iters", "1", "--overlap-grad-reduce",
                                       "--ddp-bucket-size", "5000"])
    trainer.setup(tokenizer)
    ddp = trainer.ddp_chunks[0]
    assert ddp.ddp_config.overlap_grad_reduce and ddp.ddp_config.bucket_size == 5000
    assert trainer.chunks[0].config.grad_sync_func == ddp.start_grad_sync
    trainer.close()
    trainer, tokenizer = make_trainer(["--train-iters", "1"])
    trainer.setup(tokenizer)
    ddp = trainer.ddp_chunks[0]
    assert not ddp.ddp_config.overlap_grad_reduce and not ddp.ddp_config.overlap_param_gather
    trainer.close()


def test_ddp_bucket_flags_shape_the_gradient_buckets():
    """--ddp-num-buckets (Megatron-LM: the rank's parameters / N per bucket),
    --ddp-pad-buckets-for-high-nccl-busbw and --no-align-grad-reduce reach megatron-core."""
    def buckets(flags):
        trainer, tokenizer = make_trainer(["--train-iters", "1", "--overlap-grad-reduce"] + flags)
        trainer.setup(tokenizer)
        ddp = trainer.ddp_chunks[0]
        n_params = sum(p.numel() for p in trainer.chunks[0].parameters())
        sizes = [b.grad_data.numel() for buffer in ddp.buffers for b in buffer.buckets]
        sync = trainer.chunks[0].config.grad_sync_func
        trainer.close()
        return ddp.ddp_config, n_params, sizes, sync

    config, n_params, sizes, sync = buckets(["--ddp-num-buckets", "4"])
    # Buckets close at parameter boundaries once they hold bucket_size elements.
    assert config.bucket_size == n_params // 4 and len(sizes) >= 3
    assert sync is not None
    _, _, sizes, _ = buckets([])
    assert len(sizes) == 1  # megatron-core's default: 40M elements
    config, _, sizes, _ = buckets(["--use-distributed-optimizer",
                                   "--ddp-pad-buckets-for-high-nccl-busbw"])
    assert config.pad_buckets_for_high_nccl_busbw and all(s % 2 ** 16 == 0 for s in sizes)
    _, _, _, sync = buckets(["--no-align-grad-reduce"])
    assert sync is None


def test_overlap_param_gather_is_wired_into_ddp():
    """The DP 2 and interleaved runs in test_parallel_training check the results; here, that the
    forward hooks are on and that the weights are gathered only after a step."""
    trainer, tokenizer = make_trainer(["--train-iters", "1", "--use-distributed-optimizer",
                                       "--overlap-grad-reduce", "--overlap-param-gather"])
    trainer.setup(tokenizer)
    ddp = trainer.ddp_chunks[0]
    assert ddp.ddp_config.overlap_param_gather and ddp.use_forward_hook
    assert not ddp.ddp_config.align_param_gather  # one model chunk: no interleaved schedule
    assert trainer.chunks[0].config.param_sync_func is None
    assert not trainer._params_stale
    trainer.train_step()
    assert trainer._params_stale
    trainer.gather_params()
    assert not trainer._params_stale
    trainer.close()


def test_test_loss_is_printed():
    from megastack.training.trainer import format_metrics

    line = format_metrics({"iteration": 4, "lm loss test": 5.25, "lm loss test ppl": 190.566})
    assert line.endswith("lm loss test: 5.250000E+00 | lm loss test ppl: 190.566")


def test_a_diverged_run_stops_with_the_iteration_named():
    """As Megatron-LM's --check-for-nan-in-loss-and-grad (on by default): an LR of 1e12 blows
    the weights up within a few steps; the run stops there instead of training on NaN."""
    from megastack.training.trainer import TrainingDiverged

    trainer, tokenizer = make_trainer(["--train-iters", "8", "--lr", "1e12"])
    trainer.setup(tokenizer)
    with pytest.raises(TrainingDiverged, match=r"iteration \d: the (lm loss|grad norm) is "
                                               r"(nan|inf).*--no-check-for-nan-in-loss-and-grad"):
        trainer.train()
    assert trainer.state.iteration < 8
    trainer.close()
    trainer = run(["--train-iters", "8", "--lr", "1e12", "--no-check-for-nan-in-loss-and-grad"])
    assert trainer.state.iteration == 8
    assert not all(math.isfinite(v) for v in train_losses(trainer).values())


def test_megatron_logging_flags(tmp_path):
    """--tensorboard-log-interval: per-iteration points of the loss (not the --log-interval
    averages); --log-params-norm, --log-num-zeros-in-grad and the --log-*-to-tensorboard
    scalars under Megatron-LM's tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = run(["--train-iters", "6", "--log-interval", "3", "--tensorboard-log-interval", "2",
                   "--tensorboard-dir", str(tmp_path), "--log-params-norm",
                   "--log-num-zeros-in-grad", "--log-timers-to-tensorboard",
                   "--log-world-size-to-tensorboard", "--log-memory-to-tensorboard"])
    records = [m for m in trainer.state.history if "lm loss" in m]
    assert [m["iteration"] for m in records] == [3, 6]
    weights = torch.cat([p.detach().flatten() for p in trainer.chunks[0].parameters()])
    assert records[-1]["params-norm"] == pytest.approx(weights.double().norm().item(), rel=1e-6)
    assert all(m["num-zeros"] >= 0 and m["num-zeros"] == int(m["num-zeros"]) for m in records)

    acc = EventAccumulator(str(tmp_path)).Reload()
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag in ("lm loss", "grad-norm", "num-zeros", "batch-size", "forward-backward-time",
                "optimizer-time", "world-size", "loss-scale", "learning-rate"):
        assert steps[tag] == [2, 4, 6], tag
    assert steps["params-norm"] == steps["tokens-per-sec"] == [3, 6]
    assert [e.value for e in acc.Scalars("loss-scale")] == [1.0] * 3  # written by default
    assert all(e.value > 0 for e in acc.Scalars("forward-backward-time"))
    run(["--train-iters", "2", "--tensorboard-dir", str(tmp_path / "off"),
         "--no-log-loss-scale-to-tensorboard", "--no-log-learning-rate-to-tensorboard",
         "--log-batch-size-to-tensorboard"])
    tags = EventAccumulator(str(tmp_path / "off")).Reload().Tags()["scalars"]
    assert "lm loss" in tags and "batch-size" in tags
    assert "learning-rate" not in tags and "loss-scale" not in tags


def test_sgd_trains_and_resumes_only_as_sgd(tmp_path):
    """Resuming needs megastack's SGD state initialiser (megatron-core 0.16 has none)."""
    sgd = ["--optimizer", "sgd", "--sgd-momentum", "0.5", "--lr", "0.1"]
    trainer = run(["--train-iters", "3", "--exit-interval", "2", "--save", str(tmp_path)] + sgd)
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.5
    losses = train_losses(trainer)
    assert losses[2] < losses[1]
    resumed = train_losses(run(["--train-iters", "3", "--load", str(tmp_path)] + sgd))
    straight = train_losses(run(["--train-iters", "3"] + sgd))
    assert sorted(resumed) == [3]
    # The momentum buffers came back: iteration 3 is the straight run's.
    assert resumed[3] == pytest.approx(straight[3], abs=1e-6)
    trainer, tokenizer = make_trainer(["--train-iters", "3", "--load", str(tmp_path)])
    with pytest.raises(ValueError, match="its optimizer state is sgd's, and this run uses "
                                         "--optimizer adam. Relaunch with --optimizer sgd"):
        trainer.setup(tokenizer)


def test_warmup_init_and_weight_decay_schedule():
    trainer = run(["--train-iters", "4", "--lr-warmup-iters", "2", "--lr-warmup-init", "1e-4",
                   "--weight-decay-incr-style", "linear", "--start-weight-decay", "0.0",
                   "--end-weight-decay", "0.1"])
    lrs = {m["iteration"]: m["learning-rate"] for m in trainer.state.history
           if "learning-rate" in m}
    # Megatron-LM's warmup from init_lr: init + (max - init) * step / warmup, step 1 of 2.
    assert lrs[1] == pytest.approx(1e-4 + (1e-3 - 1e-4) / 2)
    wd = trainer.optimizer.param_groups
    decayed = [g["weight_decay"] for g in wd if g["weight_decay"] > 0]
    assert decayed and decayed[0] == pytest.approx(0.1)  # 4 of 4 iterations: the end value


def test_manual_gc_collects_at_the_given_iterations_only(monkeypatch):
    import gc

    collected = []
    trainer, tokenizer = make_trainer(["--train-iters", "4", "--manual-gc",
                                       "--manual-gc-interval", "2", "--eval-interval", "4"])
    trainer.setup(tokenizer)
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(trainer.state.iteration))
    trainer.train()
    assert not gc.isenabled()
    trainer.close()
    assert gc.isenabled()
    # Start, iterations 2 and 4, and before and after the two evaluations at 4 (validation,
    # then the test split where training ends).
    assert collected == [0, 2, 4, 4, 4, 4, 4]


def test_skip_train_evaluates_the_loaded_checkpoint(tmp_path):
    trained = run(["--train-iters", "2", "--save", str(tmp_path)])
    final = {k: v for m in trained.state.history for k, v in m.items() if k.startswith("lm loss ")}
    evaluated = run(["--train-iters", "2", "--load", str(tmp_path), "--skip-train"])
    assert [m["iteration"] for m in evaluated.state.history] == [2, 2]  # validation, test
    assert not train_losses(evaluated)
    got = {k: v for m in evaluated.state.history for k, v in m.items() if k.startswith("lm loss ")}
    assert set(got) == {"lm loss validation", "lm loss validation ppl", "lm loss test",
                        "lm loss test ppl"}
    assert got == pytest.approx(final, rel=1e-6)


def test_no_save_optim_and_rng_write_the_weights_only(tmp_path, caplog):
    from megastack.checkpoint.dist_reader import DistCheckpointReader, single_process_dcp

    run(["--train-iters", "2", "--save", str(tmp_path), "--no-save-optim", "--no-save-rng"])
    with single_process_dcp():
        reader = DistCheckpointReader(str(tmp_path / "iter_0000002"))
        keys = reader.tensor_keys() + reader.object_keys()
    assert any(k.startswith("decoder.") for k in keys)
    assert not [k for k in keys if k.startswith(("optimizer", "rng_state"))]
    with caplog.at_level(logging.INFO):
        resumed = run(["--train-iters", "3", "--load", str(tmp_path),
                       "--override-opt_param-scheduler"])
    assert sorted(train_losses(resumed)) == [3]
    assert "holds no optimizer state: starting a fresh optimizer" in caplog.text
    assert "holds no RNG state" in caplog.text


def test_per_token_loss_does_not_depend_on_the_micro_batching():
    """--calculate-per-token-loss: one mean over the global batch's loss tokens, so splitting the
    batch into micro-batches with different numbers of loss tokens (--eod-mask-loss) changes
    nothing; the default mean of micro-batch means does change."""
    def grad_norm(mbs, *extra):
        trainer = run(["--train-iters", "1", "--eod-mask-loss", "--micro-batch-size", mbs,
                       *extra])
        return trainer.state.history[0]["grad-norm"]

    per_token = [grad_norm(mbs, "--calculate-per-token-loss") for mbs in ("1", "4")]
    assert per_token[0] == pytest.approx(per_token[1], rel=1e-5)
    default = [grad_norm(mbs) for mbs in ("1", "4")]
    assert default[0] != pytest.approx(default[1], rel=1e-4)


def test_pytorch_profiler_traces_the_window(tmp_path):
    trainer = run(["--train-iters", "4", "--tensorboard-dir", str(tmp_path), "--profile",
                   "--use-pytorch-profiler", "--profile-step-start", "2",
                   "--profile-step-end", "4"])
    assert trainer.state.iteration == 4
    traces = list(tmp_path.glob("*.pt.trace.json"))
    assert len(traces) == 1
    trace = json.loads(traces[0].read_text())
    # Two profiled iterations: ProfilerStep#1 and #2 (step 0 was the warm-up, iteration 1).
    steps = {e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep")}
    assert steps == {"ProfilerStep#1", "ProfilerStep#2"}


@pytest.mark.gpu
def test_nsight_capture_range_opens_and_closes():
    """Without nsys attached cudaProfilerStart/Stop do nothing; the run must go through the
    window (NVTX ranges on) and close it."""
    trainer = run(["--train-iters", "3", "--profile", "--profile-step-start", "1",
                   "--profile-step-end", "3"])
    assert trainer.state.iteration == 3
    assert not torch.autograd._profiler_enabled()


def test_log_progress_spans_jobs(tmp_path):
    """Megatron-LM's progress.txt: a line when a job starts and at every checkpoint; the run's
    FLOPs and tokens carry over a resume in the checkpoint."""
    common = ["--train-iters", "6", "--save", str(tmp_path), "--save-interval", "2",
              "--log-progress"]
    first = run(common + ["--exit-interval", "4"])
    run(common + ["--load", str(tmp_path)])
    lines = [dict(f.split(": ", 1) for f in line.split("\t")[1:] if ": " in f) | {
        "event": line.split("\t")[3]} for line in (tmp_path / "progress.txt").read_text().splitlines()]
    assert [(e["event"], e["Iteration"]) for e in lines] == [
        ("Starting job", "0"), ("Saved checkpoint", "2"), ("Saved checkpoint", "4"),
        ("Starting job", "4"), ("Saved checkpoint", "6")]
    cfg = first.cfg
    step_flops = cfg.model.flops_per_token() * cfg.train.global_batch_size * cfg.model.seq_length
    assert float(lines[-1]["Floating-point operations"]) == pytest.approx(6 * step_flops, rel=1e-4)
    assert float(lines[-1]["Tokens (in billions)"]) * 1e9 == pytest.approx(
        6 * cfg.train.global_batch_size * cfg.model.seq_length, abs=1)
    assert all(e["Job throughput"].endswith("TFLOP/s/GPU") for e in lines if "Job throughput" in e)


def test_async_save_writes_each_checkpoint_as_it_was(tmp_path, monkeypatch):
    """--async-save: the checkpoints written in the background hold their iteration's weights
    and optimizer state (not the later ones training went on to), and the finalisation
    publishes each (rename, latest file, progress.txt)."""
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    from megastack.checkpoint.dist_reader import DistCheckpointReader, single_process_dcp

    sync, background = tmp_path / "sync", tmp_path / "async"
    # Saves every iteration; --save-retain-interval 2 deletes 1 and 3 once 2 and 4 are out.
    retain = ["--save-interval", "1", "--save-retain-interval", "2"]
    run(["--train-iters", "4", "--save", str(sync), *retain])
    assert sorted(p.name for p in sync.iterdir()) == [
        "iter_0000002", "iter_0000004", ckpt.LATEST_FILE]
    scheduled = []
    schedule = AsyncCallsQueue.schedule_async_request
    monkeypatch.setattr(AsyncCallsQueue, "schedule_async_request",
                        lambda queue, request: scheduled.append(request) or schedule(queue, request))
    run(["--train-iters", "4", "--save", str(background), *retain, "--async-save",
         "--log-progress"])
    assert len(scheduled) == 4  # every save went through megatron-core's background writer
    assert sorted(p.name for p in background.iterdir()) == [
        "iter_0000002", "iter_0000004", ckpt.LATEST_FILE, "progress.txt"]
    assert ckpt.read_latest_iteration(str(background)) == 4
    progress = (background / "progress.txt").read_text()
    assert "Saved checkpoint\tIteration: 2" in progress and "Iteration: 4" in progress
    with single_process_dcp():
        for name in ("iter_0000002", "iter_0000004"):
            reference = DistCheckpointReader(str(sync / name))
            saved = DistCheckpointReader(str(background / name))
            keys = sorted(reference.tensor_keys())
            assert any(k.startswith("optimizer") for k in keys)
            assert keys == sorted(saved.tensor_keys())
            for key in keys:
                assert torch.equal(reference.load_tensor(key), saved.load_tensor(key)), (name, key)


def test_ckpt_step_loads_that_iteration_and_a_missing_one_is_named(tmp_path):
    run(["--train-iters", "4", "--save", str(tmp_path), "--save-interval", "2"])
    resumed = run(["--train-iters", "4", "--load", str(tmp_path), "--ckpt-step", "2"])
    assert sorted(train_losses(resumed)) == [3, 4]  # from iteration 2, not the latest (4)
    trainer, tokenizer = make_trainer(["--train-iters", "4", "--load", str(tmp_path),
                                       "--ckpt-step", "3"])
    with pytest.raises(ValueError, match="--ckpt-step 3: no checkpoint .*iter_0000003 "
                                         r"\(latest saved: 4\)"):
        trainer.setup(tokenizer)
    trainer, tokenizer = make_trainer(["--train-iters", "2", "--load", str(tmp_path / "none"),
                                       "--exit-on-missing-checkpoint"])
    with pytest.raises(ValueError, match="no checkpoint there .* --exit-on-missing-checkpoint"):
        trainer.setup(tokenizer)


def test_fused_cross_entropy_gives_the_same_losses(monkeypatch):
    # megatron-core compiles its fused functions with torch.compile, which on CPU costs half a
    # minute of C++ compilation per run; eager execution runs the same fused code.
    monkeypatch.setattr(torch._dynamo.config, "disable", True)
    plain = run(["--train-iters", "2"])
    fused = run(["--train-iters", "2", "--cross-entropy-loss-fusion"])
    assert fused.chunks[0].config.cross_entropy_loss_fusion
    assert fused.chunks[0].config.cross_entropy_fusion_impl == "native"
    for it, loss in train_losses(plain).items():
        assert train_losses(fused)[it] == pytest.approx(loss, rel=1e-5)


def test_replicas_that_disagree_stop_the_run(monkeypatch):
    import megatron.core.utils

    checked = []
    monkeypatch.setattr(megatron.core.utils, "check_param_hashes_across_dp_replicas",
                        lambda chunks, cross_check: checked.append(cross_check) or len(checked) < 2)
    with pytest.raises(TrainingDiverged, match="iteration 4: the data-parallel replicas hold "
                                               "different weights"):
        run(["--train-iters", "5", "--check-weight-hash-across-dp-replicas-interval", "2"])
    assert checked == [True, True]  # at iterations 2 and 4


def test_non_persistent_checkpoints_keep_the_latest_and_a_resume_takes_the_newest(tmp_path):
    """Persistent checkpoints every 3 iterations, non-persistent ones every 2: a run that
    crashes in iteration 5 resumes from the non-persistent 4, not the persistent 3."""
    save = tmp_path / "ckpt"
    flags = ["--train-iters", "5", "--save", str(save), "--save-interval", "3",
             "--non-persistent-save-interval", "2"]
    straight = train_losses(run(["--train-iters", "5"]))
    trainer, tokenizer = make_trainer(flags)
    trainer.setup(tokenizer)
    step = trainer.train_step

    def crash_in_iteration_5():
        if trainer.state.iteration == 4:
            raise RuntimeError("node lost")
        return step()

    trainer.train_step = crash_in_iteration_5
    with pytest.raises(RuntimeError, match="node lost"):
        trainer.train()
    assert ckpt.read_latest_iteration(str(save)) == 3
    # Non-persistent at 2 and 4 (3 was a persistent save): only 4 is kept.
    assert sorted(p.name for p in (save / "non_persistent").iterdir()) == [
        "iter_0000004", ckpt.LATEST_FILE]
    resumed = run(flags + ["--load", str(save)])
    assert sorted(train_losses(resumed)) == [5]
    assert train_losses(resumed)[5] == pytest.approx(straight[5], rel=1e-5)
    assert ckpt.read_latest_iteration(str(save)) == 5  # the run ends with a persistent save


def test_skipped_iterations_pass_over_their_batch_without_training(monkeypatch):
    """--iterations-to-skip 1 (Megatron-LM's numbering: the step after 1 iteration): iteration 2
    consumes its batch untrained, with no LR step and no FLOPs; the data goes on after it."""
    from megastack.training import trainer as trainer_module

    straight = run(["--train-iters", "3"])
    starts = []
    build_iterator = trainer_module.build_iterator

    def recording(dataset, consumed, *args, **kwargs):
        starts.append(consumed)
        return build_iterator(dataset, consumed, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "build_iterator", recording)
    skipping = run(["--train-iters", "3", "--iterations-to-skip", "1"])
    losses = train_losses(skipping)
    assert losses[1] == pytest.approx(train_losses(straight)[1], rel=1e-6)
    assert 2 not in losses and math.isfinite(losses[3])  # nothing trained to log at 2
    assert losses[3] != pytest.approx(train_losses(straight)[3], rel=1e-6)
    assert starts[:2] == [0, 8]  # the training data restarts after the 4 skipped samples
    assert skipping.state.consumed_train_samples == straight.state.consumed_train_samples == 12
    assert skipping.state.floating_point_operations == pytest.approx(
        straight.state.floating_point_operations * 2 / 3)
    assert skipping.scheduler.num_steps == 8  # two updates of 4 samples


def test_deterministic_mode_reaches_torch_and_megatron_core():
    straight = train_losses(run(["--train-iters", "2"]))
    try:
        trainer = run(["--train-iters", "2", "--deterministic-mode"])
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(chunk.config.deterministic_mode for chunk in trainer.chunks)
    assert train_losses(trainer) == straight  # CPU kernels were deterministic already


def test_pretrained_checkpoint_starts_a_run_that_later_resumes_from_load(tmp_path):
    """--pretrained-checkpoint P --load S --save S: the first launch fine-tunes P (as --load P
    --finetune), the next resumes from S."""
    pretrained, save = tmp_path / "pretrained", tmp_path / "run"
    run(["--train-iters", "2", "--save", str(pretrained)])
    finetuned = train_losses(run(["--train-iters", "2", "--load", str(pretrained),
                                  "--finetune"]))
    flags = ["--pretrained-checkpoint", str(pretrained), "--load", str(save), "--save", str(save)]
    first = run(["--train-iters", "2", *flags])
    assert train_losses(first) == pytest.approx(finetuned, rel=1e-6)
    resumed = run(["--train-iters", "3", "--override-opt_param-scheduler", *flags])
    assert sorted(train_losses(resumed)) == [3]
    with pytest.raises(ValueError, match=f"--pretrained-checkpoint {tmp_path / 'none'}: no "
                                         f"checkpoint there"):
        run(["--train-iters", "2", "--pretrained-checkpoint", str(tmp_path / "none")])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_memory_history_without_cuda_is_refused():
    with pytest.raises(ValueError, match="--record-memory-history records the CUDA allocator: "
                                         "it needs a GPU"):
        make_trainer(["--train-iters", "2", "--record-memory-history"])


@pytest.mark.gpu
def test_memory_history_snapshot_is_written_every_log_interval(tmp_path):
    import pickle

    path = tmp_path / "mem" / "snapshot.pickle"
    path.parent.mkdir()
    run(["--train-iters", "2", "--record-memory-history", "--memory-snapshot-path", str(path)])
    snapshot = pickle.loads(path.read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"]
    assert not list(path.parent.glob("*.tmp-*"))


def test_wandb_receives_the_tensorboard_scalars(monkeypatch, tmp_path):
    """--wandb-project with a stand-in for the wandb package (not a dependency, and W&B needs
    the network): one run, initialised from the flags, gets the scalars TensorBoard gets."""
    import sys
    import types

    from megastack.training import wandb_writer

    inits, logged = [], []

    class Run:
        name = "e"

        def log(self, values, step):
            logged.append((step, values))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: inits.append(kwargs) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(wandb_writer, "wandb_available", lambda: True)
    monkeypatch.setattr(wandb_writer, "_run", None)
    run(["--train-iters", "2", "--eval-interval", "2", "--wandb-project", "p",
         "--wandb-exp-name", "e", "--wandb-save-dir", str(tmp_path)])
    assert len(inits) == 1
    init = inits[0]
    assert (init["project"], init["name"], init["dir"]) == ("p", "e", str(tmp_path))
    assert init["config"]["train_iters"] == 2  # the run's flags
    steps = {(step, key) for step, values in logged for key in values}
    assert {(1, "lm loss"), (2, "lm loss"), (2, "lm loss validation"),
            (2, "learning-rate")} <= steps


def test_growth_mask_fades_in_an_offline_g_random_checkpoint(tmp_path):
    """--growth-mask-iters on a checkpoint that tools/grow_checkpoint.py --operator random
    wrote: the ramp starts at the loaded weights, is saved with the checkpoints, and a resumed
    run continues it (without the flag, or with it: a relaunch with the same command)."""
    from megastack.growth.grow_checkpoint import grow_checkpoint

    small, grown, large = (str(tmp_path / name) for name in ("small", "grown", "large"))
    run(["--train-iters", "1", "--save", small])
    grow_checkpoint(small, grown, stacking_list="0,1,0,1", operator="random", fsync=False)
    deep = ["--num-layers", "4", "--save", large, "--train-iters", "4"]
    trainer, tokenizer = make_trainer(deep + ["--load", grown, "--finetune",
                                              "--growth-mask-iters", "2", "--exit-interval", "1"])
    trainer.setup(tokenizer)
    assert trainer.growth_mask.active and trainer.growth_mask.value == 0.0
    trainer.train()
    trainer.close()
    assert trainer.growth_mask.value == 0.5 and trainer.state.iteration == 1
    trainer, tokenizer = make_trainer(deep + ["--load", large, "--growth-mask-iters", "2"])
    trainer.setup(tokenizer)
    assert trainer.growth_mask.active and trainer.growth_mask.value == 0.5  # picked up
    trainer.train()
    trainer.save()
    trainer.close()
    assert not trainer.growth_mask.active and trainer.state.iteration == 4
    from megatron.core import dist_checkpointing

    def saved_ramp(iteration):
        common = dist_checkpointing.load_common_state_dict(ckpt.checkpoint_dir(large, iteration))
        return common["megastack"].get("growth_mask")

    ramp = {"layers": [2, 3], "start_iteration": 0, "iterations": 2}
    assert saved_ramp(1) == saved_ramp(4) == ramp
    trainer, tokenizer = make_trainer(deep + ["--load", large, "--growth-mask-iters", "2"])
    trainer.setup(tokenizer)  # relaunched after the ramp: nothing to mask
    assert not trainer.growth_mask.active and trainer.growth_mask.value == 1.0
    trainer.close()
    trainer, tokenizer = make_trainer(["--train-iters", "2", "--load", small, "--finetune",
                                       "--growth-mask-iters", "2"])
    with pytest.raises(ValueError, match="--growth-mask-iters fades in what G_random added to "
                                         "a model just grown.*not grown"):
        trainer.setup(tokenizer)
    stacked = str(tmp_path / "stacked")
    grow_checkpoint(small, stacked, stacking_list="0,1,0,1", operator="stack", fsync=False)
    trainer, tokenizer = make_trainer(deep + ["--load", stacked, "--finetune",
                                              "--growth-mask-iters", "2"])
    with pytest.raises(ValueError, match=r"this run's --load: grown with --operator stack\)"):
        trainer.setup(tokenizer)


def test_growth_mask_fades_in_new_units_of_g_random_width_growth(tmp_path):
    """A checkpoint widened by --width-operator random (layers kept): the ramp records the source
    widths, so a relaunch in the middle of it masks the same units. (That the mask at 0 gives
    the small model's loss: tests/training/test_growth_mask_parallel.py.)"""
    from megastack.growth.grow_checkpoint import grow_checkpoint

    small, grown, large = (str(tmp_path / name) for name in ("small", "grown", "large"))
    run(["--train-iters", "2", "--save", small])
    grow_checkpoint(small, grown, stacking_list="0,1", operator="stack", width_operator="random",
                    target_hidden_size=128, target_num_attention_heads=8,
                    target_num_query_groups=4, target_ffn_hidden_size=352, fsync=False)
    wide = ["--hidden-size", "128", "--num-attention-heads", "8", "--num-query-groups", "4",
            "--ffn-hidden-size", "352", "--save", large, "--train-iters", "4",
            "--growth-mask-iters", "4"]
    trainer = run(wide + ["--load", grown, "--finetune", "--exit-interval", "1"])
    assert trainer._growth_mask_ramp == {
        "layers": [], "start_iteration": 0, "iterations": 4,
        "source_widths": {"hidden_size": 64, "num_attention_heads": 4, "num_query_groups": 2,
                          "ffn_hidden_size": 176}}
    trainer, tokenizer = make_trainer(wide + ["--load", large])
    trainer.setup(tokenizer)
    mask = trainer.growth_mask
    assert mask.active and mask.value == 0.25
    assert mask.width.hidden.tolist() == list(range(64, 128))
    assert mask.width.ffn.tolist() == list(range(176, 352))
    trainer.close()
