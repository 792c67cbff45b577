"""tools/export_hf.py and tools/import_hf.py: megastack checkpoints <-> Hugging Face Llama/Qwen2.

The checks are the logits: transformers' LlamaForCausalLM (Qwen2ForCausalLM) built from an
export computes what the megastack model computes, and a megastack model imported from a HF
Llama or Qwen2 computes what HF does.
"""

import json
import os

import pytest
import torch

from megastack.config import ModelConfig, ParallelConfig
from tests.scripts import load_script

transformers = pytest.importorskip("transformers")  # a test dependency (setup.py's "test")

GQA = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=48, vocab_size=128, seq_length=16)
# Multi-head attention, tied embeddings, biases in every linear layer, Llama 3.2's RoPE scaling.
TIED_BIASED = GQA.replace(num_query_groups=4, untie_embeddings_and_output_weights=False,
                          add_bias_linear=True, rotary_base=1000000, rope_scaling=True,
                          rope_scaling_factor=32.0)
# Qwen2's attention: biases in the QKV projection only; tied embeddings as in its small models.
QKV_BIAS = GQA.replace(add_qkv_bias=True, untie_embeddings_and_output_weights=False,
                       rotary_base=1000000)
# Qwen3's attention: each head's queries and keys RMS-normalised before RoPE; heads wider than
# hidden / heads (--kv-channels), as in Qwen3-0.6B.
QK_NORM = GQA.replace(qk_layernorm=True, untie_embeddings_and_output_weights=False,
                      rotary_base=1000000, kv_channels=16)


# At init scale attention is nearly uniform and positions hardly matter: larger query and key
# weights make the logits depend on how RoPE (and its scaling) rotates them.
QK_GAIN = 20.0


def tokens(vocab: int, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(0))


def megastack_logits(model, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
    with torch.no_grad():
        return model.eval()(ids, positions, None).float()


def hf_logits(directory, ids: torch.Tensor, architecture: str = "LlamaForCausalLM"
              ) -> torch.Tensor:
    hf = getattr(transformers, architecture).from_pretrained(str(directory), dtype=torch.float32)
    with torch.no_grad():
        return hf.eval()(input_ids=ids).logits.float()


def random_model(cfg: ModelConfig, seed: int):
    from megastack.model import build_model_chunks

    model = build_model_chunks(cfg, ParallelConfig(), seed=seed)[0]
    with torch.no_grad():  # biases and norm weights start at 0 and 1: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif "linear_qkv" in name:
                p.mul_(QK_GAIN)
    return model


def save_random_hf(model_class, config, directory, noise: float = 0.1):
    """A HF model with its norms and biases moved off their init and position-sensitive
    attention (QK_GAIN), saved to `directory`."""
    hf = model_class(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(noise * torch.randn_like(p))
            elif "q_proj" in name or "k_proj" in name:
                p.mul_(QK_GAIN)
    hf.save_pretrained(str(directory))
    return hf


def stack_and_export(ckpt, tmp_path) -> dict:
    """tools/grow_checkpoint.py stacks the 2 layers of `ckpt` to 4 (0,1,0,1) and export_hf writes
    the grown model to tmp_path/hf_grown; returns its config.json."""
    from megastack.checkpoint.hf_convert import export_hf

    grow = load_script("tools/grow_checkpoint.py")
    assert grow.main(["--load", str(ckpt), "--save", str(tmp_path / "grown"),
                      "--stacking-list", "0,1,0,1", "--no-fsync"]) == 0
    export_hf(str(tmp_path / "grown"), str(tmp_path / "hf_grown"), dtype="fp32")
    with open(tmp_path / "hf_grown" / "config.json") as f:
        return json.load(f)


def save(model, cfg: ModelConfig, root) -> str:
    import dataclasses

    from megastack.checkpoint.training_checkpoint import save_checkpoint

    return save_checkpoint(str(root), 3, [model], save_rng=False, common={
        "megastack": {"model": cfg.to_dict(), "parallel": dataclasses.asdict(ParallelConfig())}})


def load(cfg: ModelConfig, root):
    from megastack.checkpoint.training_checkpoint import load_checkpoint
    from megastack.model import build_model_chunks

    model = build_model_chunks(cfg, ParallelConfig(), seed=99)[0]
    load_checkpoint(str(root), [model], load_rng=False)
    return model


@pytest.mark.parametrize("cfg, architecture", [(GQA, "LlamaForCausalLM"),
                                                (TIED_BIASED, "LlamaForCausalLM"),
                                                (QKV_BIAS, "Qwen2ForCausalLM"),
                                                (QK_NORM, "Qwen3ForCausalLM")],
                         ids=["gqa", "tied-biased", "qkv-bias", "qk-norm"])
def test_exported_model_computes_the_megastack_logits(megatron_world, tmp_path, cfg,
                                                      architecture):
    from megastack.checkpoint.hf_convert import export_hf

    model = random_model(cfg, seed=1)
    save(model, cfg, tmp_path / "ckpt")
    report = export_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"), dtype="fp32")
    assert report.files == ("config.json", "model.safetensors")
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["architectures"] == [architecture]
    ids = tokens(cfg.vocab_size)
    expected = megastack_logits(model, ids)
    assert torch.allclose(hf_logits(tmp_path / "hf", ids, architecture), expected,
                          atol=1e-5, rtol=1e-4)

    # And back: the import holds the very same tensors.
    from megastack.checkpoint.dist_reader import DistCheckpointReader
    from megastack.checkpoint.hf_convert import import_hf

    import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    original = DistCheckpointReader(str(tmp_path / "ckpt" / "iter_0000003"))
    back = DistCheckpointReader(str(tmp_path / "back" / "iter_0000000"))
    assert sorted(original.tensor_keys()) == sorted(back.tensor_keys())
    for key in original.tensor_keys():
        assert torch.equal(original.load_tensor(key), back.load_tensor(key)), key


def test_imported_llama_computes_the_hf_logits_and_grows(megatron_world, tmp_path):
    """A HF Llama 3.x-style model (GQA, RoPE scaling; vocabulary 100, padded to 128 on import)
    trains in megastack: same logits, and tools/grow_checkpoint.py stacks it."""
    from megastack.checkpoint.hf_convert import import_hf

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=16, rope_theta=1000000.0,
        rms_norm_eps=1e-5, rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192})
    save_random_hf(transformers.LlamaForCausalLM, config, tmp_path / "hf")
    report = import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"))
    cfg = report.model
    assert (cfg.vocab_size, cfg.rotary_base, cfg.num_query_groups) == (128, 1000000, 2)
    assert (cfg.rope_scaling, cfg.rope_scaling_factor) == (True, 32.0)
    ids = tokens(100)
    expected = hf_logits(tmp_path / "hf", ids)
    logits = megastack_logits(load(cfg, tmp_path / "ckpt"), ids)
    assert torch.allclose(logits[..., :100], expected, atol=1e-5, rtol=1e-4)
    unscaled = megastack_logits(load(cfg.replace(rope_scaling=False), tmp_path / "ckpt"), ids)
    assert not torch.allclose(unscaled[..., :100], expected, atol=1e-5, rtol=1e-4)

    grow = load_script("tools/grow_checkpoint.py")
    assert grow.main(["--load", str(tmp_path / "ckpt"), "--save", str(tmp_path / "grown"),
                      "--stacking-list", "0,1,0,1", "--no-fsync"]) == 0


def test_imported_qwen2_computes_the_hf_logits(megatron_world, tmp_path):
    """Qwen2 (QKV-only biases, tied embeddings, a window size named but switched off) imports
    as a model with --add-qkv-bias."""
    from megastack.checkpoint.hf_convert import import_hf

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=16, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        sliding_window=4096)
    hf = save_random_hf(transformers.Qwen2ForCausalLM, config, tmp_path / "hf")
    cfg = import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt")).model
    assert cfg.add_qkv_bias and not cfg.add_bias_linear
    assert not cfg.untie_embeddings_and_output_weights
    ids = tokens(128)
    expected = hf_logits(tmp_path / "hf", ids, "Qwen2ForCausalLM")
    assert torch.allclose(megastack_logits(load(cfg, tmp_path / "ckpt"), ids), expected,
                          atol=1e-5, rtol=1e-4)
    # The biases were imported, not left at their zero init.
    from megastack.checkpoint.dist_reader import DistCheckpointReader

    reader = DistCheckpointReader(str(tmp_path / "ckpt" / "iter_0000000"))
    qkv_bias = reader.load_tensor("decoder.layers.self_attention.linear_qkv.bias")
    assert qkv_bias.shape == (2, 32 + 2 * 2 * 8) and qkv_bias.abs().min() > 0

    # Grown by stacking, it goes back to Hugging Face as a deeper Qwen2.
    config = stack_and_export(tmp_path / "ckpt", tmp_path)
    assert (config["model_type"], config["num_hidden_layers"]) == ("qwen2", 4)
    grown = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path / "hf_grown"))
    assert torch.equal(grown.model.layers[2].self_attn.q_proj.bias,
                       hf.model.layers[0].self_attn.q_proj.bias)


def test_imported_qwen3_computes_the_hf_logits_and_grows(megatron_world, tmp_path):
    """Qwen3 (q/k norms, tied embeddings, heads wider than hidden / heads as in Qwen3-0.6B)
    imports as a model with --qk-layernorm and --kv-channels, and grown by stacking goes back to
    Hugging Face as a deeper Qwen3."""
    from megastack.checkpoint.hf_convert import import_hf

    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=16,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    hf = save_random_hf(transformers.Qwen3ForCausalLM, config, tmp_path / "hf", noise=0.3)
    cfg = import_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt")).model
    assert cfg.qk_layernorm and not cfg.qkv_bias and cfg.norm_epsilon == 1e-6
    assert (cfg.kv_channels, cfg.query_size) == (16, 64)
    ids = tokens(128)
    expected = hf_logits(tmp_path / "hf", ids, "Qwen3ForCausalLM")
    assert torch.allclose(megastack_logits(load(cfg, tmp_path / "ckpt"), ids), expected,
                          atol=1e-5, rtol=1e-4)
    # The q/k norms count: without them (ones) the logits differ.
    plain = load(cfg, tmp_path / "ckpt")
    with torch.no_grad():
        for layer in plain.decoder.layers:
            layer.self_attention.q_layernorm.weight.fill_(1.0)
    assert not torch.allclose(megastack_logits(plain, ids), expected, atol=1e-3)

    exported = stack_and_export(tmp_path / "ckpt", tmp_path)
    assert (exported["model_type"], exported["num_hidden_layers"], exported["head_dim"]) == (
        "qwen3", 4, 16)
    grown = transformers.Qwen3ForCausalLM.from_pretrained(str(tmp_path / "hf_grown"))
    assert torch.equal(grown.model.layers[3].self_attn.k_norm.weight,
                       hf.model.layers[1].self_attn.k_norm.weight)


def test_q_k_norms_with_biases_are_refused_for_export():
    from megastack.checkpoint.hf_llama import hf_config

    with pytest.raises(ValueError, match="q/k norms with biases"):
        hf_config(QK_NORM.replace(add_qkv_bias=True), torch.float32)


def test_hf_configs_megastack_cannot_hold_are_named(tmp_path):
    from megastack.checkpoint.hf_llama import model_config_from_hf

    base = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}
    assert model_config_from_hf(base, "c.json").num_query_groups == 4
    assert model_config_from_hf({**base, "head_dim": 8}, "c.json").kv_channels is None
    assert model_config_from_hf({**base, "head_dim": 16}, "c.json").query_size == 64
    for changes, message in [
        ({"model_type": "gpt2"}, "model_type 'gpt2': only Llama-architecture models"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "Llama 3.x's"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
         "Llama 3.x's"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "RoPE scaling"),
        ({"attention_bias": True}, "every linear layer a bias or none"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"model_type": "mistral", "sliding_window": 4096}, "sliding-window attention"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096},
         "sliding-window attention"),
        ({"model_type": "qwen3", "attention_bias": True}, "Qwen3's biases in q, k, v and o_proj"),
    ]:
        with pytest.raises(ValueError, match=message):
            model_config_from_hf({**base, **changes}, "c.json")


def test_tools_refuse_bad_input_and_write_nothing(megatron_world, tmp_path, capsys):
    from megastack.checkpoint.hf_convert import export_hf

    layernorm = GQA.replace(normalization="LayerNorm")
    save(random_model(layernorm, seed=1), layernorm, tmp_path / "ln")
    with pytest.raises(ValueError, match="the model has LayerNorm .* LlamaForCausalLM cannot"):
        export_hf(str(tmp_path / "ln"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")

    save(random_model(GQA, seed=1), GQA, tmp_path / "ckpt")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    export = load_script("tools/export_hf.py")
    assert export.main(["--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "taken")]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"

    # Sharded output: one file per tensor at a tiny shard size, with HF's index.
    report = export_hf(str(tmp_path / "ckpt"), str(tmp_path / "sharded"), dtype="bf16",
                       max_shard_bytes=1)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == report.tensors == len(report.files) - 2

    import_tool = load_script("tools/import_hf.py")
    extra = tmp_path / "sharded_extra"
    os.rename(tmp_path / "sharded", extra)
    from safetensors.torch import save_file
    save_file({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)},
              str(extra / "model-extra.safetensors"))
    index["weight_map"]["model.layers.0.self_attn.q_norm.weight"] = "model-extra.safetensors"
    (extra / "model.safetensors.index.json").write_text(json.dumps(index))
    assert import_tool.main(["--hf-dir", str(extra), "--save", str(tmp_path / "imp")]) == 2
    assert "have no place in megastack's GPT (e.g. model.layers.0.self_attn.q_norm.weight)" in \
        capsys.readouterr().err
    assert not os.path.exists(tmp_path / "imp")
