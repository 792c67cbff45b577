import pytest
import torch

from megastack.config import ModelConfig, ParallelConfig

# Small enough to build in well under a second; GQA (2 query groups of 2 heads) by default.
SMALL = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=48, vocab_size=128, seq_length=16)
MHA = SMALL.replace(num_query_groups=4)
QKV_BIAS = SMALL.replace(add_qkv_bias=True)  # Qwen2's attention
QK_NORM = SMALL.replace(qk_layernorm=True)  # Qwen3's attention
WIDE_HEADS = SMALL.replace(kv_channels=16)  # heads * head_dim = 64 != hidden 32 (Qwen3-0.6B's)


@pytest.fixture
def build(megatron_world):
    """build(cfg, seed, state=None) -> a one-process GPTModel in eval mode, loaded from `state`."""
    from megastack.growth.state import load_global_state
    from megastack.model import build_model_chunks

    def _build(cfg: ModelConfig, seed: int, state=None):
        model = build_model_chunks(cfg, ParallelConfig(), seed=seed)[0]
        if state is not None:
            load_global_state([model], state)
        return model.eval()

    return _build


def logits(model, cfg: ModelConfig, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_length), generator=gen)
    positions = torch.arange(cfg.seq_length).unsqueeze(0).expand(batch, -1)
    with torch.no_grad():
        return model(tokens, positions, None).float()


@pytest.fixture
def source(build):
    """source(cfg) -> (global state, logits) of a source model with non-trivial norm weights
    and biases."""
    from megastack.growth.state import model_global_state

    def _source(cfg):
        state = model_global_state([build(cfg, seed=1)])
        gen = torch.Generator().manual_seed(1)
        for key in state:
            if "norm" in key:  # norms start at 1; make sure growth moves them correctly
                state[key] = 1 + 0.2 * torch.randn(state[key].shape, generator=gen)
            elif key.endswith("bias"):  # and biases at 0
                state[key] = 0.2 * torch.randn(state[key].shape, generator=gen)
        return state, logits(build(cfg, seed=5, state=state), cfg)
    return _source
