"""--keep-optimizer-state with megatron-core's distributed optimizer (fully_reshardable state).

Its checkpoint holds optimizer.state.{param,exp_avg,exp_avg_sq}.<model key>, where `param` is the
optimizer's fp32 main copy of the weight: it must grow like the weight (the next step copies it
back into the model), while the moments follow the depth operator.
"""

import pytest
import torch

from megastack.checkpoint.dist_reader import DistCheckpointReader
from megastack.growth.grow_checkpoint import grow_checkpoint
from tests.training.launch import TINY, read_metrics, run_pretrain

DISTOPT = TINY + ["--use-distributed-optimizer"]
QKV = "decoder.layers.self_attention.linear_qkv.weight"
PROJ = "decoder.layers.self_attention.linear_proj.weight"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("distopt")
    run_pretrain(DISTOPT + ["--train-iters", "2", "--save", str(root / "src"),
                            "--save-interval", "2"], nproc=1, metrics=root / "src.jsonl")
    return root


def test_random_growth_grows_main_params_like_weights(source):
    report = grow_checkpoint(str(source / "src"), str(source / "random"), stacking_list="0-3*2",
                             operator="random", keep_optimizer_state=True, seed=5, fsync=False)
    assert report.optimizer_state == "carried"
    grown = DistCheckpointReader(report.checkpoint_dir)
    src = DistCheckpointReader(str(source / "src" / "iter_0000002"))
    for key in (QKV, PROJ, "embedding.word_embeddings.weight"):
        weight = grown.load_tensor(key)
        assert torch.equal(grown.load_tensor(f"optimizer.state.param.{key}"), weight), key
    # layers 4-7 are fresh draws: their moments start at zero, layers 0-3 keep the source's
    moments = grown.load_tensor(f"optimizer.state.exp_avg.{QKV}")
    assert torch.equal(moments[:4], src.load_tensor(f"optimizer.state.exp_avg.{QKV}"))
    assert moments[:4].abs().sum() > 0 and moments[4:].abs().sum() == 0


def test_stacked_distributed_optimizer_state_resumes_in_megatron(source):
    """Training from the grown checkpoint loads the carried state: after two steps the model
    differs from the same grown weights trained with a fresh optimizer (the moments steer the
    update; the first step has learning rate 0 at the end of a one-iteration warmup)."""
    losses = {}
    for keep in (True, False):
        name = "keep" if keep else "fresh"
        grow_checkpoint(str(source / "src"), str(source / name), stacking_list="0-3*2",
                        keep_optimizer_state=keep, fsync=False)
        metrics = source / f"{name}.jsonl"
        proc = run_pretrain(DISTOPT + ["--num-layers", "8", "--train-iters", "2", "--load",
                                       str(source / name)], nproc=1, metrics=metrics)
        assert "loaded checkpoint" in proc.stdout + proc.stderr
        losses[name] = (read_metrics(metrics), read_metrics(metrics, "lm loss validation"))
    assert losses["keep"][0][1] == pytest.approx(losses["fresh"][0][1], rel=1e-6)  # same weights
    assert abs(losses["keep"][1][2] - losses["fresh"][1][2]) > 1e-4
