"""--load resumes a growth run where it stopped; each iteration is saved once."""

import hashlib
import json
import re
import shutil

import pytest

from tests.training.launch import read_metrics, run_pretrain

GROW = ["--model", "tiny-2l", "--mock-data", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1", "--lr", "1e-3",
        "--lr-decay-style", "cosine", "--train-iters", "6", "--grow-at-tokens", "512", "--stacking-list", "0-1*4",
        "--target-num-layers", "8"]  # 2 small iterations, then 4 large ones


def _files(root):
    """Name -> (mtime, content hash) of every file under root: rewritten files show."""
    return {str(p.relative_to(root)):
            (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).digest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _saves(proc, path):
    return len(re.findall(rf"saved checkpoint {re.escape(str(path))}\n", proc.stdout))


def _common(checkpoint_dir):
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(str(checkpoint_dir))


@pytest.mark.slow
def test_growth_run_resumes_in_either_phase(tmp_path):
    save = tmp_path / "ckpt"
    args = [*GROW, "--save", str(save)]

    # 1. Stopped by --exit-interval in the large phase; iteration 4 is saved once, and the save
    #    records the growth point.
    m1 = tmp_path / "m1.jsonl"
    p1 = run_pretrain([*args, "--exit-interval", "4"], nproc=1, metrics=m1)
    assert _saves(p1, save / "iter_0000004") == 1
    assert _common(save / "iter_0000004")["megastack"]["grown_at_iteration"] == 2
    small_grown = {d: _files(save / d) for d in ("small", "grown")}

    # 2. --load resumes the large phase: no small phase, no growth, optimizer and schedule
    #    restored (the LR continues the decay over iterations 3-6).
    m2 = tmp_path / "m2.jsonl"
    p2 = run_pretrain([*args, "--load", str(save)], nproc=1, metrics=m2)
    assert "resuming at iteration 4" in p2.stdout
    assert read_metrics(m2, phase="small") == {}
    assert sorted(read_metrics(m2, phase="large")) == [5, 6]
    assert read_metrics(m2, "learning-rate")[5] == pytest.approx(1e-3 * 0.5 * (1 - 2 ** -0.5))
    assert {d: _files(save / d) for d in ("small", "grown")} == small_grown
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "6"
    assert _saves(p2, save / "iter_0000006") == 1

    # 3. Only the small phase's checkpoint left (as after a crash while growing): --load resumes
    #    it at the growth point, grows, and trains the large phase as an uninterrupted run does.
    #    --save-interval 2 also saves iteration 6, which the end of the run must not save again.
    for p in save.glob("iter_*"):
        shutil.rmtree(p)
    (save / "latest_checkpointed_iteration.txt").unlink()
    m3 = tmp_path / "m3.jsonl"
    p3 = run_pretrain([*args, "--load", str(save), "--save-interval", "2"], nproc=1, metrics=m3)
    assert "resuming at iteration 2" in p3.stdout
    assert sorted(read_metrics(m3, phase="small")) == []
    assert _files(save / "small") == small_grown["small"]
    assert _saves(p3, save / "iter_0000006") == 1
    assert _common(save / "iter_0000004")["megastack"]["grown_at_iteration"] == 2
    uninterrupted, first, resumed = (read_metrics(m, phase="large") for m in (m3, m1, m2))
    assert sorted(uninterrupted) == [3, 4, 5, 6]
    for it in (3, 4):
        assert first[it] == pytest.approx(uninterrupted[it], rel=1e-6)
    for it in (5, 6):
        assert resumed[it] == pytest.approx(uninterrupted[it], rel=1e-6)
    valid = [read_metrics(m, "lm loss validation", phase="large")[6] for m in (m2, m3)]
    assert valid[0] == pytest.approx(valid[1], rel=1e-6)


# ---------------------------------------------------------------- what --load finds

def _config(*extra):
    from megastack.training.arguments import build_pretrain_config, parse_args

    return build_pretrain_config(parse_args([*GROW, "--save", "unused", *extra]), vocab_size=None)


def _resume_point(cfg):
    from megastack.training.growth_run import _phase_configs, _resume_point, growth_point_iterations

    small_iters = growth_point_iterations(cfg)
    return _resume_point(cfg, *_phase_configs(cfg, small_iters), small_iters)


def _fake_checkpoint(root, iteration, megastack):
    """A save root whose latest checkpoint has only the common state --load inspects."""
    import torch

    d = root / f"iter_{iteration:07d}"
    d.mkdir(parents=True)
    (d / "metadata.json").write_text(json.dumps(
        {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
         "common_backend": "torch", "common_backend_version": 1}))
    torch.save({"iteration": iteration, "megastack": megastack}, d / "common.pt")
    (root / "latest_checkpointed_iteration.txt").write_text(str(iteration))


def _models():
    from megastack.training.growth_run import _phase_configs

    small, large = _phase_configs(_config(), 2)
    return small.model.to_dict(), large.model.to_dict()


def test_load_finds_the_phase_to_resume(tmp_path):
    small, large = _models()
    load = tmp_path / "run"
    # Nothing there: the small trainer handles the empty --load as every run does.
    assert _resume_point(_config("--load", str(load))) == ("start", str(load))
    _fake_checkpoint(load / "small", 2, {"model": small})
    assert _resume_point(_config("--load", str(load))) == ("small", str(load / "small"))
    _fake_checkpoint(load, 4, {"model": large, "grown_at_iteration": 2})
    assert _resume_point(_config("--load", str(load))) == ("large", str(load))
    # A large-phase interval save of a version that did not record the growth point.
    other = tmp_path / "old"
    _fake_checkpoint(other, 3, {"model": large})
    assert _resume_point(_config("--load", str(other))) == ("large", str(other))


@pytest.mark.parametrize("case, match", [
    ("plain small checkpoint", r"--load .* not a checkpoint of a growth run's large phase"),
    ("grown elsewhere", r"grew after 1 iterations.*--grow-at-tokens"),
    ("other target", r"--load .*another model .*--num-layers: 4 vs 8.*--target-num-layers"),
    ("small past growth", r"--load .*iteration 3, past this run's growth point.*--grow-at-tokens"),
    ("latest names nothing", r"names iteration 5 but .* is missing"),
    ("finetune", r"--finetune does not apply to a growth run"),
])
def test_load_that_cannot_resume_is_refused(tmp_path, case, match):
    small, large = _models()
    load, extra = tmp_path / "run", []
    if case == "plain small checkpoint":
        _fake_checkpoint(load, 4, {"model": small})
    elif case == "grown elsewhere":
        _fake_checkpoint(load, 4, {"model": large, "grown_at_iteration": 1})
    elif case == "other target":
        _fake_checkpoint(load, 4, {"model": {**large, "num_layers": 4}, "grown_at_iteration": 2})
    elif case == "small past growth":
        _fake_checkpoint(load / "small", 3, {"model": small})
    elif case == "latest names nothing":
        load.mkdir()
        (load / "latest_checkpointed_iteration.txt").write_text("5")
    else:
        _fake_checkpoint(load, 4, {"model": large, "grown_at_iteration": 2})
        extra = ["--finetune"]
    with pytest.raises(ValueError, match=match):
        _resume_point(_config("--load", str(load), *extra))
