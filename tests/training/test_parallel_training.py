"""Same seed, data and global batch give the same losses at every parallel layout (gloo, fp32),
and a run stopped, saved and resumed at another layout continues exactly."""

import pytest

from tests.training.launch import TINY, read_metrics, run_pretrain

pytestmark = pytest.mark.slow

ITERS = ["--train-iters", "6"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank")
    metrics = out / "metrics.jsonl"
    run_pretrain(TINY + ITERS + ["--eval-interval", "4", "--save", str(out / "ckpt"),
                                 "--log-params-norm"], nproc=1, metrics=metrics)
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1], "the tiny model must learn something in 6 steps"
    return {"loss": losses, "grad-norm": read_metrics(metrics, "grad-norm"),
            "validation": read_metrics(metrics, "lm loss validation"),
            "params-norm": read_metrics(metrics, "params-norm"),
            "checkpoint": out / "ckpt" / "iter_0000006"}


def _assert_same(reference, values, iters, tol):
    for it in iters:
        assert abs(values[it] - reference[it]) <= tol, (it, values[it], reference[it])


def test_tp1_pp2_dp2_interleaved_matches_one_rank(one_rank, tmp_path):
    """With the overlapped reductions and gathers, which the interleaved schedule starts for
    every model chunk itself (Megatron-LM's aligned parameter gathers); stopped at 3 and resumed
    from a checkpoint the data-parallel replicas wrote and read together (fully parallel save
    and load)."""
    metrics, save = tmp_path / "m.jsonl", tmp_path / "ckpt"
    common = TINY + ITERS + ["--pipeline-model-parallel-size", "2",
                             "--num-layers-per-virtual-pipeline-stage", "1",
                             "--use-distributed-optimizer", "--overlap-grad-reduce",
                             "--overlap-param-gather", "--eval-interval", "4", "--save", str(save)]
    run_pretrain(common + ["--exit-interval", "3"], nproc=4, metrics=metrics)
    assert _ranks_writing_weights(save / "iter_0000003") == {0, 1, 2, 3}
    run_pretrain(common + ["--load", str(save), "--ckpt-fully-parallel-load"], nproc=4,
                 metrics=metrics)
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    _assert_same(one_rank["loss"], losses, range(1, 7), 1e-4)
    _assert_same(one_rank["validation"], read_metrics(metrics, "lm loss validation"), [4, 6],
                 1e-4)


def _ranks_writing_weights(checkpoint_dir) -> set[int]:
    """The ranks whose shard files (__RANK_N.distcp) hold model weights: neither optimizer
    state nor per-rank RNG records. Without the fully parallel save only the first data-parallel
    replica of each stage writes weights (here {0, 2})."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(checkpoint_dir)).read_metadata()
    return {int(info.relative_path.split("_")[2]) for index, info in metadata.storage_data.items()
            if not index.fqn.startswith("optimizer")
            and isinstance(metadata.state_dict_metadata[index.fqn], TensorStorageMetadata)}


def test_tp2_pp2_dp2_matches_one_rank(one_rank, tmp_path):
    metrics = tmp_path / "m.jsonl"
    # --calculate-per-token-loss: with every token counted (no --eod-mask-loss) the same
    # objective, its normalisation done once over the data-parallel ranks' tokens instead.
    # The overlapped gradient reduction in several buckets, each started by DDP's hooks once
    # its gradients are ready (--no-align-grad-reduce) rather than by the pipeline schedule.
    run_pretrain(TINY + ITERS + ["--tensor-model-parallel-size", "2",
                                 "--pipeline-model-parallel-size", "2", "--log-params-norm",
                                 "--calculate-per-token-loss", "--overlap-grad-reduce",
                                 "--ddp-num-buckets", "3", "--no-align-grad-reduce"],
                 nproc=8, metrics=metrics)
    _assert_same(one_rank["loss"], read_metrics(metrics), range(1, 6), 1e-4)
    # Tensor-parallel weights must be counted once each in the global grad and weight norms.
    _assert_same(one_rank["grad-norm"], read_metrics(metrics, "grad-norm"), range(1, 6), 1e-4)
    _assert_same(one_rank["params-norm"], read_metrics(metrics, "params-norm"), range(1, 7), 1e-4)


def test_resume_at_another_layout_matches_straight_run(one_rank, tmp_path):
    """3 iterations at TP2 (distributed optimizer), stop; resume at PP2 (interleaved, its
    sends and receives not overlapped) for 3 more."""
    save = tmp_path / "ckpt"
    metrics = tmp_path / "m.jsonl"
    common = TINY + ITERS + ["--use-distributed-optimizer"]
    run_pretrain(common + ["--tensor-model-parallel-size", "2", "--save", str(save),
                           "--exit-interval", "3"], nproc=2, metrics=metrics)
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "3"
    run_pretrain(common + ["--pipeline-model-parallel-size", "2", "--load", str(save),
                           "--num-layers-per-virtual-pipeline-stage", "1",
                           "--no-overlap-p2p-communication"], nproc=2, metrics=metrics)
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    # Iteration 5 and 6 depend on restored Adam moments and step counts, not just weights.
    _assert_same(one_rank["loss"], losses, [4, 5, 6], 1e-5)


def test_uneven_pipeline_stages_match_one_rank(one_rank, tmp_path):
    """PP2 with 1 + 3 layers for 3 iterations; resumed interleaved, 2 + 2 layers in two
    chunks per stage, the saved layers placed on the other stages."""
    save, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    common = TINY + ITERS + ["--pipeline-model-parallel-size", "2"]
    run_pretrain(common + ["--decoder-first-pipeline-num-layers", "1", "--save", str(save),
                           "--exit-interval", "3"], nproc=2, metrics=metrics)
    assert _layers_written_by_rank(save / "iter_0000003") == {0: {0}, 1: {1, 2, 3}}
    run_pretrain(common + ["--decoder-last-pipeline-num-layers", "2",
                           "--num-virtual-stages-per-pipeline-rank", "2", "--load", str(save),
                           "--save", str(save)], nproc=2, metrics=metrics)
    assert _layers_written_by_rank(save / "iter_0000006") == {0: {0, 2}, 1: {1, 3}}
    losses = read_metrics(metrics)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    _assert_same(one_rank["loss"], losses, range(1, 7), 1e-4)


def _layers_written_by_rank(checkpoint_dir) -> dict[int, set[int]]:
    """Which transformer layers each rank's shard file holds (the first QKV weight's layer
    axis): the stage each layer was on when saved."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(checkpoint_dir)).read_metadata()
    key = "decoder.layers.self_attention.linear_qkv.weight"
    layers: dict[int, set[int]] = {}
    for index, info in metadata.storage_data.items():
        if index.fqn == key:
            rank = int(info.relative_path.split("_")[2])
            layers.setdefault(rank, set()).add(index.offset[0])
    return layers


def test_overlapped_grad_reduce_and_param_gather_match_one_rank(one_rank, tmp_path):
    """--overlap-grad-reduce and --overlap-param-gather at DP 2 with several buckets (each
    bucket's reduce-scatter started during the backward, its all-gather during the next forward):
    the same losses, evaluations, and weights in the checkpoint of iteration 6 (saved right after
    the step, before any forward pass gathered the other rank's shards; its writing split over
    both replicas as planned for the save at 3, and done in the background with --async-save,
    finalised by both ranks together). The wiring itself is checked in test_trainer_runs.py."""
    metrics = tmp_path / "m.jsonl"
    run_pretrain(TINY + ITERS + ["--use-distributed-optimizer", "--overlap-grad-reduce",
                                 "--overlap-param-gather", "--ddp-bucket-size", "20000",
                                 "--eval-interval", "4", "--save", str(tmp_path / "ckpt"),
                                 "--save-interval", "3", "--ckpt-assume-constant-structure",
                                 "--async-save"],
                 nproc=2, metrics=metrics)
    _assert_same(one_rank["loss"], read_metrics(metrics), range(1, 7), 1e-4)
    _assert_same(one_rank["grad-norm"], read_metrics(metrics, "grad-norm"), range(1, 7), 1e-4)
    validation = read_metrics(metrics, "lm loss validation")
    assert sorted(validation) == [4, 6]
    _assert_same(one_rank["validation"], validation, [4, 6], 1e-4)
    _assert_same_weights(one_rank["checkpoint"], tmp_path / "ckpt" / "iter_0000006")


def _assert_same_weights(reference_dir, checkpoint_dir, tol=1e-5):
    from megastack.checkpoint.dist_reader import DistCheckpointReader, single_process_dcp

    with single_process_dcp():
        reference = DistCheckpointReader(str(reference_dir))
        saved = DistCheckpointReader(str(checkpoint_dir))
        keys = [k for k in reference.tensor_keys() if not k.startswith("optimizer")]
        assert keys and sorted(keys) == sorted(
            k for k in saved.tensor_keys() if not k.startswith("optimizer"))
        for key in keys:
            diff = (reference.load_tensor(key) - saved.load_tensor(key)).abs().max().item()
            assert diff <= tol, (key, diff)


def test_batch_rampup_and_fp16_at_dp2_match_one_rank(tmp_path):
    """--rampup-batch-size 2 2 12 up to 8: at DP 2 the batches of 2 are one micro-batch per
    replica, those of 8 four; every iteration's batch and loss are the one-rank run's. In fp16
    with dynamic loss scaling, started high enough to overflow: the replicas agree on which
    iterations overflow (megatron-core's found-inf all-reduce) and skip them together, and
    megatron-core's hash check finds the replicas' weights identical at iterations 3 and 6."""
    ramp = TINY + ["--train-samples", "40", "--rampup-batch-size", "2", "2", "12",
                   "--fp16", "--initial-loss-scale", str(2 ** 24), "--hysteresis", "1",
                   "--check-weight-hash-across-dp-replicas-interval", "3"]
    runs = {}
    for nproc in (1, 2):
        metrics = tmp_path / f"m{nproc}.jsonl"
        run_pretrain(ramp + (["--use-distributed-optimizer"] if nproc > 1 else []),
                     nproc=nproc, metrics=metrics)
        runs[nproc] = metrics
    batches = read_metrics(runs[2], "global batch size")
    assert list(batches.values()) == [2, 2, 4, 6, 8, 8, 8]
    assert batches == read_metrics(runs[1], "global batch size")
    skipped = read_metrics(runs[2], "skipped iterations")
    assert skipped == read_metrics(runs[1], "skipped iterations") and skipped[1] == 1
    assert read_metrics(runs[2], "loss scale") == read_metrics(runs[1], "loss scale")
    updated = [it for it, n in skipped.items() if n == 0]
    assert len(updated) >= 3
    _assert_same(read_metrics(runs[1]), read_metrics(runs[2]), updated, 1e-3)
