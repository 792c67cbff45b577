import pytest
import torch

from megastack.config import ModelConfig, ParallelConfig

# Small enough to build in well under a second; GQA (2 query groups of 2 heads) by default.
SMALL = ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=48, vocab_size=128, seq_length=16)



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
