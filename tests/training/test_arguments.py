"""Bad configurations fail before any training work, naming the flag and the fix."""

import json
import os
import subprocess
import sys
import time

import pytest

from megastack.training.arguments import build_pretrain_config, padded_vocab_size, parse_args


def config(argv):
    return build_pretrain_config(parse_args(argv), vocab_size=None)


BASE = ["--model", "tiny-4l", "--mock-data", "--train-iters", "2"]


@pytest.mark.parametrize("argv, world, needles", [
    (["--pipeline-model-parallel-size", "3"], 3,
     ["--num-layers 4", "--pipeline-model-parallel-size 3", "divides"]),
    (["--global-batch-size", "6", "--micro-batch-size", "4"], 1,
     ["--global-batch-size 6", "--micro-batch-size 4", "multiple of 4"]),
    (["--global-batch-size", "6", "--micro-batch-size", "2"], 4,
     ["--global-batch-size 6", "data-parallel size 4"]),
    (["--tensor-model-parallel-size", "8"], 8,
     ["--num-attention-heads 4", "--tensor-model-parallel-size 8"]),
    (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "3"], 2,
     ["--num-layers-per-virtual-pipeline-stage 3"]),
    (["--num-attention-heads", "0"], 1, ["--num-attention-heads must be >= 1, got 0"]),
    (["--num-query-groups", "0"], 1, ["--num-query-groups must be >= 1, got 0"]),
])
def test_layout_errors_name_the_flag(argv, world, needles, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ValueError) as e:
        config(BASE + argv)
    for needle in needles:
        assert needle in str(e.value)


def test_missing_data_path_names_the_flag(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="--data-path"):
        config(["--model", "tiny-4l", "--train-iters", "2"])


def test_nonexistent_data_prefix_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    prefix = str(tmp_path / "corpus_text_document")
    with pytest.raises(ValueError) as e:
        config(["--model", "tiny-4l", "--train-iters", "2", "--data-path", prefix,
                "--tokenizer-type", "NullTokenizer"])
    assert prefix + ".bin" in str(e.value) and "tools/preprocess_data.py" in str(e.value)


def test_train_iters_from_tokens(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = config(["--model", "tiny-4l", "--mock-data", "--train-tokens", "4096",
                  "--global-batch-size", "8"])
    assert cfg.train.train_iters == 8  # 4096 tokens / (8 x 64)


def test_decrease_batch_size_if_needed_takes_the_largest_batch_that_fits(monkeypatch, caplog):
    """Megatron-LM's relaunch on fewer (or more) replicas: 8 sequences at DP 3 become 6."""
    monkeypatch.setenv("WORLD_SIZE", "3")
    flags = BASE + ["--global-batch-size", "8", "--decrease-batch-size-if-needed"]
    with caplog.at_level("WARNING", logger="megastack.training.arguments"):
        cfg = config(flags)
    assert cfg.train.global_batch_size == 6
    assert "training with global batch 6 instead of --global-batch-size 8" in caplog.text
    assert config(flags + ["--micro-batch-size", "2"]).train.global_batch_size == 6
    with pytest.raises(ValueError, match="is not divisible by --micro-batch-size 1"):
        config(BASE + ["--global-batch-size", "8"])
    with pytest.raises(ValueError, match="smaller than one micro-batch per data-parallel replica "
                                         "\\(4 x 3 = 12\\)"):
        config(flags + ["--micro-batch-size", "4"])
    with pytest.raises(ValueError, match="the ramp's batch sizes are fixed"):
        config(flags + ["--rampup-batch-size", "3", "3", "30"])
    monkeypatch.setenv("WORLD_SIZE", "4")  # a launch that divides it gets the full batch
    assert config(flags).train.global_batch_size == 8


GPT_FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
             "--seq-length", "32", "--mock-data", "--train-iters", "2"]


def test_model_flags_without_a_preset_mean_what_they_mean_to_megatron(monkeypatch):
    """A Megatron-LM GPT script (no --swiglu, no --normalization ...) gets Megatron's GPT model,
    not megastack's Llama-style preset defaults; the flags switch each part on."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    gpt = config(GPT_FLAGS).model
    assert (gpt.normalization, gpt.position_embedding_type) == ("LayerNorm", "learned_absolute")
    assert not gpt.swiglu and gpt.add_bias_linear and not gpt.untie_embeddings_and_output_weights
    assert gpt.ffn_hidden_size == 4 * 64
    llama = config(GPT_FLAGS + ["--swiglu", "--disable-bias-linear", "--normalization", "RMSNorm",
                                "--position-embedding-type", "rope",
                                "--untie-embeddings-and-output-weights"]).model
    assert (llama.normalization, llama.position_embedding_type) == ("RMSNorm", "rope")
    assert llama.swiglu and not llama.add_bias_linear and llama.untie_embeddings_and_output_weights
    assert llama.ffn_hidden_size == 128  # Megatron: int(4h * 2/3 / 64) * 64
    preset = config(["--model", "tiny-4l", "--mock-data", "--train-iters", "2"]).model
    assert preset.swiglu and preset.normalization == "RMSNorm"  # presets keep their own
    assert (gpt.attention_dropout, gpt.hidden_dropout) == (0.1, 0.1)  # Megatron's default
    assert (preset.attention_dropout, preset.hidden_dropout) == (0.0, 0.0)  # Llama-style
    no_dropout = config(GPT_FLAGS + ["--attention-dropout", "0", "--hidden-dropout", "0.05"]).model
    assert (no_dropout.attention_dropout, no_dropout.hidden_dropout) == (0.0, 0.05)


def test_qkv_bias_and_embedding_init_flags_reach_the_model(megatron_world):
    from megastack.config import ParallelConfig
    from megastack.model import build_model_chunks

    model = config(["--model", "tiny-2l", "--mock-data", "--train-iters", "2", "--add-qkv-bias",
                    "--embedding-init-method-std", "0.5"]).model
    assert model.add_qkv_bias and not model.add_bias_linear
    params = dict(build_model_chunks(model, ParallelConfig(), seed=0)[0].named_parameters())
    biases = sorted(name for name in params if name.endswith("bias"))
    assert biases == [f"decoder.layers.{i}.self_attention.linear_qkv.bias" for i in (0, 1)]
    assert abs(params["embedding.word_embeddings.weight"].std().item() - 0.5) < 0.02
    assert abs(params["output_layer.weight"].std().item() - 0.02) < 0.002
    with pytest.raises(ValueError, match="--embedding-init-method-std must be > 0, got 0.0"):
        config(GPT_FLAGS + ["--embedding-init-method-std", "0"])
    # A checkpoint with a QKV bias does not load into a model without one.
    assert model.weight_differences(model.replace(add_qkv_bias=False)) == [
        "--add-qkv-bias (a QKV bias): True vs False"]
    assert model.replace(add_bias_linear=True).weight_differences(
        model.replace(add_bias_linear=True, add_qkv_bias=False)) == []


def test_kv_channels_sets_the_head_width(megatron_world):
    """--kv-channels other than hidden / heads (Qwen3-0.6B: 16 heads of 128 on hidden 1024):
    queries are heads * kv_channels wide, and the counts follow megatron-core's model."""
    from megastack.config import ParallelConfig
    from megastack.model import build_model_chunks

    model = config(["--model", "tiny-2l", "--mock-data", "--train-iters", "2",
                    "--kv-channels", "32"]).model
    assert (model.head_dim, model.query_size, model.kv_channels) == (32, 128, 32)
    params = dict(build_model_chunks(model, ParallelConfig(), seed=0)[0].named_parameters())
    assert params["decoder.layers.0.self_attention.linear_proj.weight"].shape == (64, 128)
    assert params["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (128 + 2 * 2 * 32, 64)
    assert sum(p.numel() for p in params.values()) == model.num_parameters()
    # The default said explicitly is the default.
    default = config(["--model", "tiny-2l", "--mock-data", "--train-iters", "2",
                      "--kv-channels", "16"]).model
    assert default.kv_channels is None and default == model.replace(kv_channels=None)
    assert model.weight_differences(default) == ["--kv-channels (head width): 32 vs 16"]


def test_qk_layernorm_flag_reaches_the_model(megatron_world):
    from megastack.config import ParallelConfig
    from megastack.model import build_model_chunks

    model = config(["--model", "tiny-2l", "--mock-data", "--train-iters", "2",
                    "--qk-layernorm"]).model
    assert model.qk_layernorm
    params = dict(build_model_chunks(model, ParallelConfig(), seed=0)[0].named_parameters())
    norms = sorted(name for name in params if "q_layernorm" in name or "k_layernorm" in name)
    assert norms == [f"decoder.layers.{i}.self_attention.{qk}_layernorm.weight"
                     for i in (0, 1) for qk in "kq"]
    assert all(params[name].shape == (model.head_dim,) for name in norms)
    assert model.weight_differences(model.replace(qk_layernorm=False)) == [
        "--qk-layernorm: True vs False"]


def test_dropout_reaches_megatron_core():
    """The dropout flags were refused (and dropout hard-coded to 0): a Megatron-LM script's
    --attention-dropout/--hidden-dropout must set TransformerConfig's."""
    from megastack.config import to_transformer_config

    model = config(GPT_FLAGS + ["--attention-dropout", "0.2", "--hidden-dropout", "0.3"]).model
    tc = to_transformer_config(model)
    assert (tc.attention_dropout, tc.hidden_dropout) == (0.2, 0.3)
    with pytest.raises(ValueError, match="--hidden-dropout must be in \\[0, 1\\), got 1.0"):
        config(GPT_FLAGS + ["--hidden-dropout", "1"])


def test_training_defaults_are_megatrons():
    """A Megatron-LM script that leaves these out must train as it did there."""
    args = parse_args(GPT_FLAGS)
    assert (args.adam_beta1, args.adam_beta2, args.adam_eps) == (0.9, 0.999, 1e-8)
    assert args.lr_decay_style == "linear"
    assert (args.log_interval, args.eval_interval, args.eval_iters) == (100, 1000, 100)
    assert (args.weight_decay, args.clip_grad, args.min_lr, args.lr_warmup_iters) == (0.01, 1.0,
                                                                                      0.0, 0)
    cfg = config(GPT_FLAGS)
    assert (cfg.train.adam_beta2, cfg.train.lr_decay_style) == (0.999, "linear")


GROW = ["--save", "unused", "--grow-at-tokens", "256"]


@pytest.mark.parametrize("argv, needles", [
    # A plan that does not fit is refused before the small phase trains (it failed at growth).
    (GROW + ["--stacking-list", "0-3*4", "--target-num-layers", "12"],
     ["--stacking-list", "16 entries", "12 layers"]),
    (GROW + ["--stacking-list", "0-5*2"], ["source layer(s) [4, 5]", "4 layers"]),
    (GROW + ["--stacking-list", "1,0,2,3,1,0,2,3", "--growth-operator", "zero"],
     ["--growth-operator zero", "first occurrences"]),
    (GROW + ["--stacking-list", "0-3*2", "--target-tensor-model-parallel-size", "3"],
     ["grown model", "--target-tensor-model-parallel-size 3 x --target-pipeline-model-parallel"]),
    (["--save", "unused", "--grow-at-tokens", "1X", "--stacking-list", "0-3*2"],
     ["--grow-at-tokens", "'1X'", "or auto"]),
    # Width growth in one run: checked like tools/grow_checkpoint.py's.
    (GROW + ["--stacking-list", "0-3*2", "--target-hidden-size", "128"],
     ["head_dim", "--target-num-attention-heads 8"]),
    (GROW + ["--stacking-list", "0-3*2", "--target-ffn-hidden-size", "100"],
     ["cannot shrink ffn_hidden_size", "source 176, target 100"]),
    (GROW + ["--stacking-list", "0-3*2", "--growth-width-operator", "random"],
     ["--growth-width-operator random grows widths", "--target-hidden-size"]),
    (GROW + ["--stacking-list", "0-3*2", "--target-ffn-hidden-size", "352",
             "--growth-mask-iters", "4"], ["--growth-mask-iters fades in what G_random added"]),
    (["--target-hidden-size", "128"],
     ["--target-hidden-size only apply to growth in one run"]),
    (GROW + ["--stacking-list", "0-3*2", "--target-decoder-first-pipeline-num-layers", "3"],
     ["grown model's layout", "--target-decoder-first-pipeline-num-layers split the layers",
      "--target-pipeline-model-parallel-size >= 2"]),
    (["--target-decoder-last-pipeline-num-layers", "2"],
     ["--target-decoder-last-pipeline-num-layers only apply to growth in one run"]),
    # Growth flags without --grow-at-tokens were ignored: a plain run of the small model.
    (["--stacking-list", "0-3*2", "--lr-after-growth", "3e-4"],
     ["--stacking-list, --lr-after-growth only apply to growth in one run", "--grow-at-tokens"]),
])
def test_growth_flags_are_checked_before_training(argv, needles):
    with pytest.raises(ValueError) as e:
        config(BASE + argv)
    for needle in needles:
        assert needle in str(e.value)


def test_growth_target_depth_and_token_counts():
    cfg = config(BASE + GROW[:2] + ["--grow-at-tokens", "0.5K", "--stacking-list", "0-3*2"])
    assert (cfg.growth.target_num_layers, cfg.growth.grow_at_tokens) == (8, 500)
    assert cfg.growth.target_widths == {}
    assert cfg.growth.target_model(cfg.model) == cfg.model.replace(num_layers=8)


def test_growth_target_widths():
    cfg = config(BASE + GROW + ["--stacking-list", "0-3*2", "--target-hidden-size", "128",
                                "--target-num-attention-heads", "8", "--growth-width-operator",
                                "random", "--growth-mask-iters", "4"])
    g = cfg.growth
    assert g.target_widths == {"hidden_size": 128, "num_attention_heads": 8,
                               "num_query_groups": 2, "ffn_hidden_size": 176}
    assert g.width_operator == "random"
    assert g.target_model(cfg.model) == cfg.model.replace(num_layers=8, hidden_size=128,
                                                          num_attention_heads=8)
    args = parse_args(["--model", "tiny-4l", "--mock-data", "--train-tokens", "2K",
                       "--global-batch-size", "2"])
    assert args.train_tokens == 2000.0


def test_uneven_pipeline_stages_in_both_phases(monkeypatch):
    """The grown model's first/last stage counts are its own flags; the embedding and loss
    counted as layers apply to both phases."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    pp2 = BASE + ["--pipeline-model-parallel-size", "2"]
    cfg = config(pp2 + ["--decoder-first-pipeline-num-layers", "1"] + GROW
                 + ["--stacking-list", "0-3*2", "--target-decoder-last-pipeline-num-layers", "3"])
    assert cfg.parallel.stage_num_layers(4) == (1, 3)
    assert cfg.growth.target_parallel.stage_num_layers(8) == (5, 3)
    cfg = config(pp2 + ["--account-for-embedding-in-pipeline-split",
                        "--account-for-loss-in-pipeline-split"] + GROW + ["--stacking-list", "0-3*3"])
    assert cfg.growth.target_parallel.account_for_loss_in_pipeline_split
    assert cfg.growth.target_parallel.stage_num_layers(12) == (6, 6)
    with pytest.raises(ValueError, match="--decoder-first-pipeline-num-layers 4 must be between 1"):
        config(pp2 + ["--decoder-first-pipeline-num-layers", "4"])
    # Interleaved: Megatron-LM's chunk count, kept as such for uneven stages.
    cfg = config(pp2 + ["--global-batch-size", "4", "--decoder-first-pipeline-num-layers", "2",
                        "--num-virtual-stages-per-pipeline-rank", "2"] + GROW
                 + ["--stacking-list", "0-3*3", "--target-decoder-last-pipeline-num-layers", "4",
                    "--target-num-virtual-stages-per-pipeline-rank", "2"])
    assert cfg.parallel.chunk_num_layers(4) == ((1, 1), (1, 1))
    assert cfg.growth.target_parallel.chunk_num_layers(12) == ((4, 4), (2, 2))
    with pytest.raises(ValueError, match="interleave uneven stages with "
                                         "--num-virtual-stages-per-pipeline-rank"):
        config(pp2 + ["--global-batch-size", "4", "--decoder-first-pipeline-num-layers", "2",
                      "--num-layers-per-virtual-pipeline-stage", "1"])


def test_vocab_padding_does_not_depend_on_tp():
    assert padded_vocab_size(50257, 128, 1) == padded_vocab_size(50257, 128, 8) == 50304


def test_cli_fails_fast_with_exit_code_2(tmp_path):
    """No process group, model or data is built before the error."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "megastack.pretrain", "--model", "tiny-4l", "--mock-data",
         "--train-iters", "2", "--pipeline-model-parallel-size", "3"],
        capture_output=True, text=True, timeout=120, env={"WORLD_SIZE": "3", "PATH": ""},
    )
    assert proc.returncode == 2
    assert "--pipeline-model-parallel-size 3" in proc.stderr
    assert "CUDA not available" not in proc.stdout  # the runtime was never initialised
    assert time.monotonic() - start < 60


def test_cli_setup_user_error_exits_2_without_traceback(tmp_path):
    """A --load whose latest file names a missing iteration is reported, not raised."""
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7")
    proc = subprocess.run(
        [sys.executable, "-m", "megastack.pretrain", "--model", "tiny-2l", "--mock-data",
         "--train-iters", "2", "--load", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={"WORLD_SIZE": "1", "PATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr and "names iteration 7" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_growth_run_setup_user_error_exits_2_without_traceback(tmp_path):
    """The same for growth in one run: --finetune with --load is refused before training."""
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("7")
    proc = subprocess.run(
        [sys.executable, "-m", "megastack.pretrain", "--model", "tiny-2l", "--mock-data",
         "--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters", "4",
         "--grow-at-tokens", "256", "--stacking-list", "0-1*2", "--target-num-layers", "4",
         "--save", str(tmp_path / "save"), "--load", str(tmp_path), "--finetune"],
        capture_output=True, text=True, timeout=120,
        env={"WORLD_SIZE": "1", "PATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr and "--finetune does not apply" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("impl", ["local", "fused", "auto"])
def test_sequence_parallel_without_transformer_engine_is_rejected(impl, monkeypatch):
    import megastack.layer_impl

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(megastack.layer_impl, "transformer_engine_available", lambda: False)
    with pytest.raises(ValueError) as e:
        config(BASE + ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                       "--transformer-impl", impl])
    assert "--sequence-parallel" in str(e.value)
    assert "--transformer-impl transformer_engine" in str(e.value)


def test_sequence_parallel_checked_for_the_grown_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--target-tensor-model-parallel-size 2"):
        config(BASE + ["--sequence-parallel", "--transformer-impl", "local",
                       "--grow-at-tokens", "1000", "--stacking-list", "0-3*2",
                       "--target-num-layers", "8", "--target-tensor-model-parallel-size", "2",
                       "--save", str(tmp_path)])


def test_sequence_parallel_accepted_with_transformer_engine_or_tp1(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = config(BASE + ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                         "--transformer-impl", "transformer_engine"])
    assert cfg.parallel.sequence_parallel
    monkeypatch.setenv("WORLD_SIZE", "1")
    config(BASE + ["--sequence-parallel", "--transformer-impl", "local"])


def test_torch_norms_refuse_sequence_parallel():
    """Why the check exists: without Transformer Engine the final norm of every spec (the fused
    spec is a layer spec, so megatron-core picks the block's final norm) is a torch norm."""
    from megatron.core.transformer import TransformerConfig, transformer_block
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from megastack.kernels.spec import get_gpt_layer_fused_spec
    from megastack.layer_impl import transformer_engine_available

    if transformer_engine_available():
        pytest.skip("Transformer Engine present: its norms support sequence parallelism")
    assert issubclass(get_gpt_layer_fused_spec().module, TransformerLayer)
    tc = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2,
                           tensor_model_parallel_size=2, sequence_parallel=True,
                           normalization="RMSNorm")
    with pytest.raises(AssertionError, match="sequence parallel"):
        transformer_block.LayerNormImpl(tc, 8)


def test_full_recompute_needs_a_method():
    with pytest.raises(ValueError) as e:
        config(BASE + ["--recompute-granularity", "full"])
    assert "--recompute-granularity full" in str(e.value) and "--recompute-method" in str(e.value)
    cfg = config(BASE + ["--recompute-granularity", "full", "--recompute-method", "block",
                         "--recompute-num-layers", "2"])
    assert (cfg.train.recompute_method, cfg.train.recompute_num_layers) == ("block", 2)
    cfg = config(BASE + ["--recompute-granularity", "full", "--recompute-method", "uniform"])
    assert cfg.train.recompute_num_layers == 1  # Megatron-LM's default
    with pytest.raises(ValueError, match="--recompute-method"):
        config(BASE + ["--recompute-granularity", "selective", "--recompute-method", "uniform"])
    with pytest.raises(ValueError, match="--recompute-num-layers must be >= 1"):
        config(BASE + ["--recompute-granularity", "full", "--recompute-method", "uniform",
                       "--recompute-num-layers", "0"])


def test_wsd_needs_its_decay_iters():
    with pytest.raises(ValueError, match="--lr-decay-style WSD needs --lr-wsd-decay-iters"):
        config(BASE + ["--lr-decay-style", "WSD"])
    with pytest.raises(ValueError, match="--lr-wsd-decay-iters 3"):
        config(BASE + ["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "3"])
    cfg = config(BASE + ["--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "1",
                         "--lr-wsd-decay-style", "cosine"])
    assert (cfg.train.lr_wsd_decay_iters, cfg.train.lr_wsd_decay_style) == (1, "cosine")
    # In samples with --train-samples (8 per iteration here), rounded to iterations.
    samples = ["--model", "tiny-4l", "--mock-data", "--global-batch-size", "8",
               "--train-samples", "80", "--lr-decay-style", "WSD"]
    assert config(samples + ["--lr-wsd-decay-samples", "23"]).train.lr_wsd_decay_iters == 3
    with pytest.raises(ValueError, match="--lr-wsd-decay-samples goes with --train-samples"):
        config(BASE + ["--lr-decay-style", "WSD", "--lr-wsd-decay-samples", "8"])
    with pytest.raises(ValueError, match="not both"):
        config(samples + ["--lr-wsd-decay-samples", "8", "--lr-wsd-decay-iters", "1"])


def test_scheduler_resume_flags_use_megatron_names():
    args = parse_args(BASE + ["--override-opt_param-scheduler"])
    assert args.override_opt_param_scheduler and not args.use_checkpoint_opt_param_scheduler
    args = parse_args(BASE + ["--use-checkpoint-opt-param-scheduler"])
    assert args.use_checkpoint_opt_param_scheduler
    with pytest.raises(ValueError, match="only one of --override-opt_param-scheduler"):
        config(BASE + ["--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler"])


@pytest.mark.parametrize("argv, needle", [
    (["--micro-batch-size", "0"], "--micro-batch-size must be >= 1, got 0"),
    (["--global-batch-size", "0"], "--global-batch-size must be >= 1, got 0"),
    (["--global-batch-size", "-4"], "--global-batch-size must be >= 1, got -4"),
    (["--eval-interval", "-1"], "--eval-interval must be >= 0"),
    (["--eval-iters", "-1"], "--eval-iters must be >= 0"),
    (["--save", "ckpt", "--save-interval", "0"], "--save-interval must be >= 1, got 0"),
    (["--exit-interval", "0"], "--exit-interval must be >= 1, got 0"),
    # Megatron-LM refuses these; they silently bent the LR schedule or failed in its scheduler.
    (["--train-iters", "14", "--lr-warmup-iters", "10", "--lr-decay-iters", "5"],
     "--lr-warmup-iters 10 must be smaller than the 5 iterations"),
    (["--lr-warmup-iters", "2"], "--lr-warmup-iters 2 must be smaller than the 2 iterations"),
    (["--lr-warmup-iters", "-3"], "--lr-warmup-iters must be >= 0, got -3"),
    (["--lr-decay-iters", "0"], "--lr-decay-iters must be >= 1, got 0"),
    (["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr 0.001 must be between 0 and --lr 0.0001"),
    (["--init-method-std", "-0.02"], "--init-method-std must be > 0, got -0.02"),
    (["--norm-epsilon", "0"], "--norm-epsilon must be > 0, got 0.0"),
])
def test_sizes_and_intervals_are_checked(argv, needle, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError) as e:
        config(BASE + argv)
    assert needle in str(e.value)


@pytest.mark.parametrize("flag", ["--save", "--tensorboard-dir", "--data-cache-path"])
def test_output_dir_under_a_file_is_refused_before_training(flag, tmp_path):
    """--save under a file failed with NotADirectoryError at the first checkpoint."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError) as e:
        config(BASE + [flag, str(tmp_path / "afile" / "out")])
    assert f"{flag} {tmp_path / 'afile' / 'out'}" in str(e.value) and "is a file" in str(e.value)
    assert not (tmp_path / "afile" / "out").exists()
    config(BASE + [flag, str(tmp_path / "new" / "out")])  # a path yet to be made is fine


def test_group_query_attention_defaults_to_megatrons_one_group():
    """--group-query-attention alone built multi-head attention (groups = heads): other
    weight shapes than the Megatron-LM script it came from."""
    plain = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8",
             "--seq-length", "32", "--mock-data", "--train-iters", "2"]
    assert config(plain).model.num_query_groups == 8
    assert config(plain + ["--group-query-attention"]).model.num_query_groups == 1
    assert config(plain + ["--group-query-attention", "--num-query-groups", "2"]
                  ).model.num_query_groups == 2
    # A preset's own grouping stands.
    gqa = ["--model", "llama3-8b", "--mock-data", "--train-iters", "2"]
    assert config(gqa + ["--group-query-attention"]).model.num_query_groups == 8


def test_one_virtual_stage_per_pipeline_stage_is_no_interleaving(monkeypatch):
    """As in Megatron-LM: a virtual stage holding the whole pipeline stage means the plain 1F1B
    schedule (it crashed at the first step: one data iterator for an 'interleaved' model)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    # 3 micro-batches: not a multiple of PP 2, which only the interleaved schedule needs.
    cfg = config(BASE + ["--pipeline-model-parallel-size", "2",
                         "--num-layers-per-virtual-pipeline-stage", "2",
                         "--global-batch-size", "3"])
    assert cfg.parallel.virtual_pipeline_size(cfg.model.num_layers) is None
    cfg = config(BASE + ["--pipeline-model-parallel-size", "2",
                         "--num-layers-per-virtual-pipeline-stage", "1",
                         "--global-batch-size", "4"])
    assert cfg.parallel.virtual_pipeline_size(cfg.model.num_layers) == 2
    with pytest.raises(ValueError, match="multiple of --pipeline-model-parallel-size 2"):
        config(BASE + ["--pipeline-model-parallel-size", "2",
                       "--num-layers-per-virtual-pipeline-stage", "1", "--global-batch-size", "3"])


def test_grown_layout_batch_is_checked_before_training(monkeypatch):
    """The grown model's data-parallel size can differ from the small one's: a global batch
    that only the small layout divides failed after the small phase."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    grow = BASE + ["--save", "unused", "--grow-at-tokens", "256", "--stacking-list", "0-3*2",
                   "--tensor-model-parallel-size", "2", "--micro-batch-size", "2",
                   "--global-batch-size", "4"]
    config(grow)
    with pytest.raises(ValueError, match="--global-batch-size 4 is not divisible by "
                                         "--micro-batch-size 2 x its data-parallel size 4"):
        config(grow + ["--target-tensor-model-parallel-size", "1"])
    with pytest.raises(ValueError, match="multiple of --target-pipeline-model-parallel-size 2"):
        config(grow + ["--target-tensor-model-parallel-size", "1",
                       "--target-pipeline-model-parallel-size", "2", "--micro-batch-size", "1",
                       "--global-batch-size", "6",
                       "--target-num-layers-per-virtual-pipeline-stage", "1"])


def test_sample_based_schedule_flags_become_iterations():
    """Megatron-LM's sample-counted run (--train-samples, --lr-*-samples) and
    --lr-warmup-fraction were refused."""
    base = ["--model", "tiny-4l", "--mock-data", "--global-batch-size", "8"]
    cfg = config(base + ["--train-samples", "100", "--lr-decay-samples", "60",
                         "--lr-warmup-samples", "20"])
    assert cfg.train.train_iters == 12  # 100 // 8, Megatron-LM's rule
    assert (cfg.train.lr_decay_iters, cfg.train.lr_warmup_iters) == (8, 2)  # 60/8, 20/8 rounded
    cfg = config(base + ["--train-iters", "40", "--lr-warmup-fraction", "0.1"])
    assert cfg.train.lr_warmup_iters == 4
    cfg = config(base + ["--train-iters", "40", "--lr-decay-iters", "20",
                         "--lr-warmup-fraction", "0.25"])
    assert cfg.train.lr_warmup_iters == 5  # a fraction of the decay, as in Megatron-LM


@pytest.mark.parametrize("argv, needle", [
    (["--train-iters", "4", "--train-samples", "32"], "give only one of --train-iters, --train-samples"),
    (["--train-samples", "4"], "--train-samples 4 is less than the first global batch (8 "),
    (["--train-iters", "4", "--lr-warmup-samples", "8"], "go with --train-samples"),
    (["--train-samples", "64", "--lr-warmup-samples", "8", "--lr-warmup-iters", "1"],
     "in samples (--lr-*-samples) or in iterations"),
    (["--train-iters", "4", "--lr-warmup-fraction", "0.5", "--lr-warmup-iters", "1"],
     "give one of --lr-warmup-fraction, --lr-warmup-iters"),
    (["--train-iters", "4", "--lr-warmup-fraction", "1.5"], "--lr-warmup-fraction must be in [0, 1)"),
    (["--train-iters", "4", "--fp16", "--bf16"], "give one of --fp16 and --bf16"),
    (["--train-iters", "4", "--loss-scale", "1024", "--hysteresis", "4"],
     "--loss-scale, --hysteresis set the loss scaling of --fp16 training: add --fp16"),
    (["--train-iters", "4", "--fp16", "--min-loss-scale", "0"], "--min-loss-scale 0.0 must be > 0"),
    (["--train-iters", "4", "--fp8-format", "hybrid"], "--fp8-format: FP8 training is not"),
    (["--train-iters", "4", "--num-experts", "8"], "--num-experts: megastack trains dense GPT"),
    (["--train-iters", "4", "--decoder-first-pipeline-num-layers", "3"],
     "--decoder-first-pipeline-num-layers split the layers over pipeline stages: they need "
     "--pipeline-model-parallel-size >= 2"),
    (["--train-iters", "4", "--pipeline-model-parallel-layout", "Et|tL"],
     "--pipeline-model-parallel-layout: custom pipeline layouts are not implemented"),
    (["--train-iters", "4", "--async-save"], "--async-save writes the --save checkpoints"),
    (["--train-iters", "4", "--rampup-batch-size", "8", "2", "64"],
     "the start batch size must be smaller than the --global-batch-size 8"),
    (["--train-iters", "4", "--rampup-batch-size", "2", "4", "64"],
     "the increment must divide --global-batch-size 8 - start 2 = 6"),
    (["--train-iters", "4", "--micro-batch-size", "2", "--rampup-batch-size", "2", "1", "64"],
     "must be a multiple of --micro-batch-size 2 x data-parallel size 1 = 2"),
    (["--train-samples", "1", "--rampup-batch-size", "2", "2", "64"],
     "--train-samples 1 is less than the first global batch (2 samples)"),
    (["--train-iters", "4", "--overlap-param-gather", "--overlap-grad-reduce"],
     "--overlap-param-gather gathers the distributed optimizer's parameter shards"),
    (["--train-iters", "4", "--overlap-param-gather", "--use-distributed-optimizer"],
     "add --use-distributed-optimizer and --overlap-grad-reduce"),
    (["--train-iters", "4", "--optimizer", "sgd", "--use-distributed-optimizer"],
     "--optimizer sgd: megatron-core's distributed optimizer shards Adam only"),
    (["--train-iters", "4", "--start-weight-decay", "0.1"],
     "--start-weight-decay/--end-weight-decay go with --weight-decay-incr-style linear"),
    (["--train-iters", "4", "--weight-decay-incr-style", "cosine", "--end-weight-decay", "0.1"],
     "--weight-decay-incr-style cosine needs --start-weight-decay and --end-weight-decay"),
    (["--train-iters", "4", "--lr-warmup-init", "1"], "--lr-warmup-init 1.0 must be in [0, --lr"),
    (["--train-iters", "4", "--no-position-embedding", "--position-embedding-type",
      "learned_absolute"], "for a model without position embeddings give "
                           "--position-embedding-type none"),
    (["--train-iters", "4", "--use-rotary-position-embeddings", "--position-embedding-type",
      "none"], "--use-rotary-position-embeddings and --position-embedding-type none contradict"),
    (["--train-iters", "4", "--dataloader-type", "cyclic"], "--dataloader-type cyclic: "),
    (["--train-iters", "4", "--distributed-backend", "nccl"], "--distributed-backend nccl: on "
                                                              "this machine megastack runs gloo"),
    (["--train-iters", "4", "--bf16", "--grad-reduce-in-bf16",
      "--accumulate-allreduce-grads-in-fp32"], "contradict each other: keep one"),
    (["--train-iters", "4", "--manual-gc-interval", "-1"], "--manual-gc-interval must be >= 0"),
    (["--train-iters", "4", "--profile", "--use-pytorch-profiler", "--tensorboard-dir", "tb",
      "--profile-step-start", "3", "--profile-step-end", "3"], "the window is [start, end)"),
    (["--train-iters", "4", "--profile", "--use-pytorch-profiler"],
     "writes its trace into --tensorboard-dir"),
    (["--train-iters", "4", "--profile"], "add --use-pytorch-profiler on CPU"),
    (["--train-iters", "4", "--log-progress"], "--log-progress writes progress.txt into the "
                                               "--save directory: give --save"),
    (["--train-iters", "4", "--skip-train", "--eval-iters", "0"],
     "--skip-train only evaluates: give --eval-iters > 0"),
    (["--train-iters", "4", "--save", "s", "--grow-at-tokens", "256", "--stacking-list", "0-3*2",
      "--skip-train"], "--skip-train evaluates one model: drop --grow-at-tokens"),
    (["--train-iters", "4", "--tensorboard-log-interval", "0"],
     "--tensorboard-log-interval must be >= 1"),
    (["--train-iters", "4", "--rotary-percent", "0.5"], "--rotary-percent 0.5: only 1.0"),
    (["--train-iters", "4", "--ckpt-format", "torch"], "--ckpt-format torch: megastack writes"),
    (["--train-iters", "4", "--exit-duration-in-mins", "0"], "--exit-duration-in-mins must be > 0"),
    (["--train-iters", "4", "--ddp-bucket-size", "0"], "--ddp-bucket-size must be >= 1"),
    (["--train-iters", "4", "--ddp-bucket-size", "1000"],
     "--ddp-bucket-size applies with --overlap-grad-reduce"),
    (["--train-iters", "4", "--ddp-num-buckets", "4"],
     "--ddp-num-buckets applies with --overlap-grad-reduce"),
    (["--train-iters", "4", "--overlap-grad-reduce", "--ddp-num-buckets", "0"],
     "--ddp-num-buckets must be >= 1"),
    (["--train-iters", "4", "--overlap-grad-reduce", "--ddp-num-buckets", "4",
      "--ddp-bucket-size", "1000"], "--ddp-bucket-size and --ddp-num-buckets both set"),
    (["--train-iters", "4", "--ddp-pad-buckets-for-high-nccl-busbw"],
     "add --use-distributed-optimizer"),
    (["--train-iters", "4", "--overlap-param-gather-with-optimizer-step"],
     "allows it only without distributed checkpointing"),
    (["--train-samples", "400", "--lr-warmup-samples", "1000", "--lr-decay-samples", "800"],
     "--lr-warmup-samples 1000 (125 iterations) must be smaller than the 100 iterations of the "
     "LR schedule (--lr-decay-samples)"),
    (["--train-iters", "4", "--save", "s", "--grow-at-tokens", "256", "--stacking-list", "0-3*2",
      "--use-checkpoint-args", "--load", "s"], "--use-checkpoint-args does not apply to growth"),
    (["--train-iters", "4", "--save", "s", "--grow-at-tokens", "256", "--stacking-list", "0-3*2",
      "--growth-operator", "learn", "--reset-attention-mask", "--transformer-impl", "local"],
     "--growth-operator learn fits its growth maps with causal attention only"),
    (["--train-iters", "4", "--save", "s", "--grow-at-tokens", "256", "--stacking-list", "0-3*2",
      "--growth-mask-iters", "10"], "--growth-mask-iters fades in what G_random added: add "
                                    "--growth-operator random (or --growth-width-operator random"),
    (["--train-iters", "4", "--save", "s", "--grow-at-tokens", "256", "--stacking-list", "0-3*2",
      "--growth-operator", "random", "--growth-mask-iters", "0"],
     "--growth-mask-iters must be >= 1, got 0"),
    (["--train-iters", "4", "--growth-mask-iters", "0"], "--growth-mask-iters must be >= 1"),
    (["--train-iters", "4", "--context-parallel-size", "2"], "--context-parallel-size 2: context"),
    (["--train-iters", "4", "--grad-reduce-in-bf16"], "--grad-reduce-in-bf16 needs --bf16"),
    (["--train-iters", "4", "--distributed-timeout-minutes", "0"],
     "--distributed-timeout-minutes must be >= 1"),
    (["--train-iters", "4", "--wandb-exp-name", "e"], "go with --wandb-project"),
    (["--train-iters", "4", "--timing-log-level", "2"], "--timing-log-level: megastack times "),
    (["--train-iters", "4", "--main-grads-dtype", "bf16"], "--main-grads-dtype bf16: Transformer "
                                                           "Engine's precision-aware optimizer"),
    (["--train-iters", "4", "--rerun-mode", "validate_results"],
     "--rerun-mode validate_results: megastack does not re-run iterations"),
    (["--train-iters", "4", "--recompute-activations", "--recompute-granularity", "full",
      "--recompute-method", "uniform"], "--recompute-activations means --recompute-granularity "
                                        "selective"),
    (["--train-iters", "4", "--ckpt-step", "2"], "--ckpt-step 2 names an iteration (>= 0) of the "
                                                 "--load checkpoints: give --load"),
    (["--train-iters", "4", "--check-weight-hash-across-dp-replicas-interval", "0"],
     "--check-weight-hash-across-dp-replicas-interval must be >= 1"),
    (["--train-iters", "4", "--auto-detect-ckpt-format"], "megastack reads torch_dist "
                                                          "checkpoints only"),
    (["--train-iters", "4", "--non-persistent-save-interval", "10"],
     "--non-persistent-save-interval needs --save DIR"),
    (["--train-iters", "4", "--save", "s", "--non-persistent-save-interval", "10",
      "--non-persistent-ckpt-type", "local"], "--non-persistent-ckpt-type local: only 'global'"),
    (["--train-iters", "4", "--non-persistent-global-ckpt-dir", "np"],
     "--non-persistent-global-ckpt-dir go with --non-persistent-save-interval N"),
    (["--train-iters", "4", "--batch-size", "2"], "--batch-size: Megatron-LM's old name: use "
                                                  "--micro-batch-size"),
    (["--train-iters", "4", "--model-parallel-size", "2"], "use --tensor-model-parallel-size"),
    (["--train-iters", "4", "--warmup", "0.1"], "use --lr-warmup-fraction or --lr-warmup-iters"),
    (["--train-iters", "4", "--checkpoint-activations"], "use --recompute-activations"),
    (["--train-iters", "4", "--recompute-modules", "mlp"], "add --recompute-granularity selective"),
    (["--train-iters", "4", "--recompute-granularity", "selective", "--recompute-modules", "moe"],
     "--recompute-modules moe: megastack's dense layers have core_attn, mlp, layernorm"),
    (["--train-iters", "4", "--check-for-spiky-loss"], "--check-for-spiky-loss: megastack does "
                                                       "not re-run iterations"),
    (["--train-iters", "4", "--decoupled-min-lr", "0"], "--decoupled-min-lr: one LR schedule"),
    (["--train-iters", "4", "--trust-remote-code"], "without running code from them"),
    (["--train-iters", "4", "--deterministic-mode", "--cross-entropy-loss-fusion"],
     "the fused cross-entropy is not deterministic"),
])
def test_megatron_flags_megastack_cannot_honour_are_named(argv, needle):
    with pytest.raises(ValueError) as e:
        config(["--model", "tiny-4l", "--mock-data", "--global-batch-size", "8"] + argv)
    assert needle in str(e.value)


def test_megatron_flags_asking_for_what_megastack_does_are_accepted(caplog):
    head = config(["--model", "tiny-4l", "--mock-data", "--train-iters", "2"]).model.head_dim
    with caplog.at_level("INFO", logger="megastack.training.arguments"):
        config(["--model", "tiny-4l", "--mock-data", "--train-iters", "2", "--use-mcore-models",
                "--log-throughput", "--no-masked-softmax-fusion", "--no-rope-fusion",
                "--no-gradient-accumulation-fusion", "--no-bias-swiglu-fusion",
                "--kv-channels", str(head), "--rotary-percent", "1.0",
                "--ckpt-format", "torch_dist", "--overlap-grad-reduce",
                "--no-create-attention-mask-in-dataloader", "--context-parallel-size", "1"])
    assert "--log-throughput: nothing to change" in caplog.text
    cfg = config(["--model", "tiny-4l", "--mock-data", "--train-iters", "2", "--bf16",
                  "--grad-reduce-in-bf16", "--distributed-timeout-minutes", "45"])
    assert cfg.train.grad_reduce_in_bf16 and cfg.train.distributed_timeout_minutes == 45
    # Megatron-LM's Llama scripts: older spellings and switches with nothing to change.
    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--seq-length", "32", "--max-position-embeddings", "32", "--vocab-size", "128",
            "--mock-data", "--train-iters", "2"]
    assert config(base).model.position_embedding_type == "learned_absolute"
    cfg = config(base + ["--use-rotary-position-embeddings", "--no-position-embedding",
                         "--attention-softmax-in-fp32", "--no-persist-layer-norm",
                         "--legacy-tokenizer", "--use-cpu-initialization",
                         "--accumulate-allreduce-grads-in-fp32", "--distributed-backend", "gloo",
                         "--dataloader-type", "single", "--no-mmap-bin-files",
                         "--log-validation-ppl-to-tensorboard", "--use-dist-ckpt",
                         "--no-one-logger", "--rerun-mode", "disabled", "--main-grads-dtype",
                         "fp32", "--exp-avg-dtype", "fp32", "--recompute-activations"])
    assert cfg.model.position_embedding_type == "rope" and not cfg.data.mmap_bin_files
    assert cfg.train.recompute_granularity == "selective"


def test_per_split_data_path_flags(tmp_path):
    for name in ("tr", "va"):
        for ext in (".bin", ".idx"):
            (tmp_path / f"{name}{ext}").write_bytes(b"")
    tr, va = str(tmp_path / "tr"), str(tmp_path / "va")
    base = ["--model", "tiny-4l", "--train-iters", "2", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "100"]
    cfg = config(base + ["--train-data-path", tr, "--valid-data-path", "1.0", va])
    assert cfg.data.per_split_data_path == ((tr,), ("1.0", va), ())
    assert config(base + ["--data-path", tr]).data.per_split_data_path is None
    with pytest.raises(ValueError, match="not both"):
        config(base + ["--data-path", tr, "--train-data-path", tr])
    with pytest.raises(ValueError, match="--train-data-path is needed"):
        config(base + ["--valid-data-path", va])
    with pytest.raises(ValueError, match=f"--valid-data-path {tmp_path / 'x'}: "):
        config(base + ["--train-data-path", tr, "--valid-data-path", str(tmp_path / "x")])


def test_data_paths_from_files(tmp_path):
    for name in ("tr", "va", "vb"):
        for ext in (".bin", ".idx"):
            (tmp_path / f"{name}{ext}").write_bytes(b"")
    tr, va, vb = (str(tmp_path / n) for n in ("tr", "va", "vb"))
    base = ["--model", "tiny-4l", "--train-iters", "2", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "100"]
    blend = tmp_path / "blend.txt"
    blend.write_text(f"0.5 {tr}\n0.5 {va}\n")
    assert config(base + ["--data-args-path", str(blend)]).data.data_path == ("0.5", tr, "0.5", va)
    with pytest.raises(ValueError, match="--data-path or --data-args-path, not both"):
        config(base + ["--data-args-path", str(blend), "--data-path", tr])
    blend.write_text(f"{tmp_path / 'gone'}\n")
    with pytest.raises(ValueError, match=f"--data-args-path {blend}: {tmp_path / 'gone'}: "
                                         f"{tmp_path / 'gone'}.bin does not exist"):
        config(base + ["--data-args-path", str(blend)])

    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": tr, "valid": [va, vb]}))
    cfg = config(base + ["--per-split-data-args-path", str(splits), "--multiple-validation-sets"])
    assert cfg.data.per_split_data_path == ((tr,), (va, vb), ())
    assert cfg.logging.multiple_validation_sets
    with pytest.raises(ValueError, match="--train/--valid/--test-data-path or "
                                         "--per-split-data-args-path, not both"):
        config(base + ["--per-split-data-args-path", str(splits), "--train-data-path", tr])


@pytest.mark.parametrize("argv, message", [
    (["--data-path", "{tr}", "--multiple-validation-sets"],
     "give the validation datasets with --valid-data-path"),
    (["--train-data-path", "{tr}", "--valid-data-path", "0.5", "{va}", "0.5", "{tr}",
      "--multiple-validation-sets"], "weights mean nothing with --multiple-validation-sets"),
    (["--data-path", "{tr}", "--num-dataset-builder-threads", "0"],
     "--num-dataset-builder-threads must be >= 1, got 0"),
])
def test_validation_set_flags_refuse_what_megatron_core_ignores(tmp_path, argv, message):
    for name in ("tr", "va"):
        for ext in (".bin", ".idx"):
            (tmp_path / f"{name}{ext}").write_bytes(b"")
    argv = [a.format(tr=tmp_path / "tr", va=tmp_path / "va") for a in argv]
    with pytest.raises(ValueError, match=message):
        config(["--model", "tiny-4l", "--train-iters", "2", "--tokenizer-type", "NullTokenizer",
                "--vocab-size", "100"] + argv)


@pytest.mark.parametrize("argv, message", [
    (["--save", "{d}", "--save-interval", "2", "--save-retain-interval", "3"],
     "--save-retain-interval 3 must be a multiple of --save-interval 2"),
    (["--save", "{d}", "--save-retain-interval", "4"],
     "--save-retain-interval 4 must be a multiple of --save-interval "),
    (["--save", "{d}", "--save-interval", "2", "--save-retain-interval", "0"],
     "--save-retain-interval must be >= 1, got 0"),
    (["--iterations-to-skip", "3", "-1"], "--iterations-to-skip 3 -1: iterations are counted"),
])
def test_retention_and_skipping_flags_are_checked(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        config(BASE + [a.format(d=tmp_path / "ckpt") for a in argv])


def test_virtual_stages_per_pipeline_rank_is_the_other_spelling(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = BASE + ["--pipeline-model-parallel-size", "2", "--global-batch-size", "4"]
    cfg = config(base + ["--num-virtual-stages-per-pipeline-rank", "2"])
    assert cfg.parallel.num_layers_per_virtual_pipeline_stage == 1
    with pytest.raises(ValueError, match="split into 3 chunks on each of the 2 pipeline ranks"):
        config(base + ["--num-virtual-stages-per-pipeline-rank", "3"])
    with pytest.raises(ValueError, match="not both"):
        config(base + ["--num-virtual-stages-per-pipeline-rank", "2",
                       "--num-layers-per-virtual-pipeline-stage", "1"])


def test_persistent_save_interval_is_save_interval(tmp_path):
    cfg = config(BASE + ["--save", str(tmp_path), "--persistent-save-interval", "5"])
    assert cfg.checkpoint.save_interval == 5


def test_logging_level_and_local_rank(monkeypatch):
    assert parse_args(BASE + ["--logging-level", "10"]).logging_level == 10
    assert parse_args(BASE + ["--logging-level", "warning"]).logging_level == 30
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--logging-level", "loud"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    config(BASE + ["--local-rank", "0"])  # torch.distributed.launch's flag stands for the env
    assert os.environ["LOCAL_RANK"] == "0"
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="--local-rank 0 but LOCAL_RANK=1"):
        config(BASE + ["--local-rank", "0"])


def test_unknown_flags_are_explained(capsys):
    with pytest.raises(SystemExit):
        parse_args(BASE + ["--moe-router-topk", "2", "--tensor-model-paralel-size", "2",
                           "--frobnicate"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --moe-router-topk 2 --tensor-model-paralel-size 2" in err
    assert "--moe-router-topk: a Megatron-LM flag megastack does not take: mixture-of-experts" in err
    assert "--tensor-model-paralel-size: did you mean --tensor-model-parallel-size" in err
    assert "--frobnicate: not a megastack flag" in err


def test_wandb_without_the_package_is_named(monkeypatch):
    from megastack.training import wandb_writer

    monkeypatch.setattr(wandb_writer, "wandb_available", lambda: False)
    with pytest.raises(ValueError, match="--wandb-project p: the wandb package is not installed "
                                         r"\(pip install wandb\)"):
        config(BASE + ["--wandb-project", "p"])


def test_llama3_rope_scaling_flags():
    model = config(BASE + ["--use-rope-scaling", "--rope-scaling-factor", "32"]).model
    assert (model.rope_scaling, model.rope_scaling_factor) == (True, 32.0)
    assert config(BASE + ["--use-rope-scaling"]).model.rope_scaling_factor == 8.0
    with pytest.raises(ValueError, match="--rope-scaling-factor goes with --use-rope-scaling"):
        config(BASE + ["--rope-scaling-factor", "32"])
    with pytest.raises(ValueError, match="needs --position-embedding-type rope, not "
                                         "learned_absolute"):
        config(BASE + ["--use-rope-scaling", "--position-embedding-type", "learned_absolute"])
