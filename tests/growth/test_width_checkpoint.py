"""Width growth through grow_checkpoint, loaded back by megatron-core into a wider GPTModel.

The source model is saved with the trainer's save_checkpoint, grown on disk with G_direct (width)
and G_zero (depth), and loaded with the trainer's load_checkpoint (megatron-core
dist_checkpointing) into a GPTModel built at the target size: the logits must be the source's,
which only holds if every key, shape and layout on disk is what megatron-core expects.
"""

import dataclasses

import pytest
import torch

from megastack.config import ParallelConfig
from megastack.growth.grow_checkpoint import grow_checkpoint
from megastack.growth.state import load_global_state, model_global_state

from .conftest import SMALL, logits

GROWTHS = {
    "mha-2x": (SMALL.replace(num_query_groups=4),
               dict(target_hidden_size=64, target_num_attention_heads=8,
                    target_num_query_groups=8, target_ffn_hidden_size=96)),
    "gqa-2x": (SMALL, dict(target_hidden_size=64, target_num_attention_heads=8,
                           target_num_query_groups=4, target_ffn_hidden_size=80)),
}


@pytest.mark.parametrize("name", sorted(GROWTHS))
def test_width_grown_checkpoint_loads_into_megatron_with_the_source_logits(
        megatron_world, build, tmp_path, name):
    from megastack.checkpoint.training_checkpoint import load_checkpoint, save_checkpoint

    src_cfg, target = GROWTHS[name]
    model = build(src_cfg, seed=1)
    state = model_global_state([model])
    gen = torch.Generator().manual_seed(2)
    for key in state:
        if "norm" in key:  # norms start at 1; make sure they are carried, not re-initialised
            state[key] = 1 + 0.2 * torch.randn(state[key].shape, generator=gen)
    load_global_state([model], state)
    expected = logits(model, src_cfg)
    common = {"megastack": {"model": src_cfg.to_dict(),
                            "parallel": dataclasses.asdict(ParallelConfig())}}
    save_checkpoint(str(tmp_path / "src"), 10, [model], common=common)

    report = grow_checkpoint(str(tmp_path / "src"), str(tmp_path / "grown"),
                             stacking_list="0,0,1,1", operator="zero", width_operator="direct",
                             seed=3, fsync=False, **target)
    grown_cfg = report.target_model
    assert (grown_cfg.num_layers, grown_cfg.hidden_size) == (4, target["target_hidden_size"])

    grown = build(grown_cfg, seed=9)
    before = logits(grown, grown_cfg)
    common = load_checkpoint(str(tmp_path / "grown"), [grown], load_rng=False)
    assert common["megastack"]["model"] == grown_cfg.to_dict()
    after = logits(grown.eval(), grown_cfg)
    assert (after - expected).abs().max() < 1e-5
    assert (before - expected).abs().max() > 1e-3  # the check sees the loaded weights
