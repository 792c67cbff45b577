"""--growth-mask-iters on a checkpoint grown by G_random in depth and width, evaluated at TP2 x PP2
(gloo): each tensor-parallel rank masks its slice of the new heads and FFN neurons, the first
stage the embedding's new hidden units, the last the final norm, so the grown model's validation
loss at the growth point is the small model's."""

import pytest

from tests.training.launch import TINY, read_metrics, run_pretrain

pytestmark = pytest.mark.slow

WIDE = ["--num-layers", "6", "--hidden-size", "128", "--num-attention-heads", "8",
        "--num-query-groups", "4", "--ffn-hidden-size", "352"]


def test_masked_g_random_depth_and_width_starts_as_the_small_model_at_tp2_pp2(tmp_path):
    from megastack.growth.grow_checkpoint import grow_checkpoint

    small, grown = tmp_path / "small", tmp_path / "grown"
    metrics = tmp_path / "small.jsonl"
    run_pretrain(TINY + ["--train-iters", "2", "--eval-interval", "2", "--save", str(small)],
                 nproc=1, metrics=metrics)
    (small_loss,) = read_metrics(metrics, "lm loss validation").values()
    # New layers 4 and 5 (on the second stage), new query groups 2, 3 and FFN neurons
    # 176..351 (all on the second tensor-parallel rank), new hidden units 64..127.
    grow_checkpoint(str(small), str(grown), stacking_list="0,1,2,3,2,3", operator="random",
                    width_operator="random", target_hidden_size=128, target_num_attention_heads=8,
                    target_num_query_groups=4, target_ffn_hidden_size=352,
                    target_tensor_parallel_size=2, target_pipeline_parallel_size=2, fsync=False)
    evaluate = TINY + WIDE + ["--load", str(grown), "--finetune", "--skip-train",
                              "--train-iters", "2"]
    tp2_pp2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
    losses = {}
    # Without the mask on one rank (the loss does not depend on the layout): the check can fail.
    for name, flags, nproc in (("masked", ["--growth-mask-iters", "2"] + tp2_pp2, 4),
                               ("plain", [], 1)):
        metrics = tmp_path / f"{name}.jsonl"
        run_pretrain(evaluate + flags, nproc=nproc, metrics=metrics)
        (losses[name],) = read_metrics(metrics, "lm loss validation").values()
    assert losses["masked"] == pytest.approx(small_loss, abs=2e-5)
    assert abs(losses["plain"] - small_loss) > 1e-3
