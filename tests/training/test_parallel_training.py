"""Same seed, data and global batch give the same losses at every parallel layout (gloo, fp32),
and a run stopped, saved and resumed at another layout continues exactly."""

import pytest

from tests.training.launch import TINY, read_metrics, run_pretrain

pytestmark = pytest.mark.slow

ITERS = ["--train-iters", "6"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    metrics = tmp_path_factory.mktemp("one_rank") / "metrics.jsonl"
    run_pretrain(TINY + ITERS, nproc=1, metrics=metrics)
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1], "the tiny model must learn something in 6 steps"
    return {"loss": losses, "grad-norm": read_metrics(metrics, "grad-norm")}


def _assert_same(reference, values, iters, tol):
    for it in iters:
        assert abs(values[it] - reference[it]) <= tol, (it, values[it], reference[it])


def test_tp1_pp2_dp2_interleaved_matches_one_rank(one_rank, tmp_path):
    metrics = tmp_path / "m.jsonl"
    run_pretrain(TINY + ITERS + ["--pipeline-model-parallel-size", "2",
                                 "--num-layers-per-virtual-pipeline-stage", "1"],
                 nproc=4, metrics=metrics)
    _assert_same(one_rank["loss"], read_metrics(metrics), range(1, 6), 1e-4)


def test_tp2_pp2_dp2_matches_one_rank(one_rank, tmp_path):
    metrics = tmp_path / "m.jsonl"
    run_pretrain(TINY + ITERS + ["--tensor-model-parallel-size", "2",
                                 "--pipeline-model-parallel-size", "2"], nproc=8, metrics=metrics)
    _assert_same(one_rank["loss"], read_metrics(metrics), range(1, 6), 1e-4)
    # Tensor-parallel weights must be counted once each in the global grad norm.
    _assert_same(one_rank["grad-norm"], read_metrics(metrics, "grad-norm"), range(1, 6), 1e-4)


def test_resume_at_another_layout_matches_straight_run(one_rank, tmp_path):
    """3 iterations at TP2 (distributed optimizer), stop; resume at PP2 for 3 more."""
    save = tmp_path / "ckpt"
    metrics = tmp_path / "m.jsonl"
    common = TINY + ITERS + ["--use-distributed-optimizer"]
    run_pretrain(common + ["--tensor-model-parallel-size", "2", "--save", str(save),
                           "--exit-interval", "3"], nproc=2, metrics=metrics)
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "3"
    run_pretrain(common + ["--pipeline-model-parallel-size", "2", "--load", str(save)],
                 nproc=2, metrics=metrics)
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    # Iteration 5 and 6 depend on restored Adam moments and step counts, not just weights.
    _assert_same(one_rank["loss"], losses, [4, 5, 6], 1e-5)


def test_overlapped_grad_reduce_matches_one_rank(one_rank, tmp_path):
    """--overlap-grad-reduce at DP 2 with several buckets and the distributed optimizer (each
    bucket's reduce-scatter started during the backward): the same losses. The wiring itself is
    checked in test_trainer_runs.py."""
    metrics = tmp_path / "m.jsonl"
    run_pretrain(TINY + ITERS + ["--use-distributed-optimizer", "--overlap-grad-reduce",
                                 "--ddp-bucket-size", "20000"], nproc=2, metrics=metrics)
    _assert_same(one_rank["loss"], read_metrics(metrics), range(1, 7), 1e-4)
    _assert_same(one_rank["grad-norm"], read_metrics(metrics, "grad-norm"), range(1, 7), 1e-4)
