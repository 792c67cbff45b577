"""grow_checkpoint / tools/grow_checkpoint.py on a real megatron-core checkpoint.

One torchrun job (4 gloo ranks, tests/checkpoint/dist_worker.py) trains a tiny-4l model one step
at TP2 PP2, saves it with its Adam state, grows it on rank 0 (as the trainer does between
phases) to 8 layers with G_stack, then loads the grown checkpoint at TP1 PP4, TP2 PP1, PP2 with
virtual stages and TP1 PP1 and evaluates a fixed batch at each. The tests below read its
results and run further growths of its source checkpoint in this process.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from megastack.checkpoint.dist_reader import DistCheckpointReader
from megastack.checkpoint.layer_map import layer_stage_map
from megastack.config import ParallelConfig
from megastack.growth.grow_checkpoint import grow_checkpoint
from tests.scripts import load_script

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "checkpoint", "dist_worker.py")
PLAN = [0, 1, 2, 3, 0, 1, 2, 3]  # "0-3*2"
SRC_ITER = "iter_0000003"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("grow_layouts"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           WORKER, "layouts", "--out", work, "--preset", "tiny-4l", "--tp", "2", "--pp", "2",
           "--stacking-list", "0-3*2"]
    # The timeout also bounds the dist checkpoint saves inside (a dead writer would hang them).
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        pytest.fail(f"dist_worker failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    with open(os.path.join(work, "results.json")) as f:
        results = json.load(f)
    return work, results


@pytest.fixture
def src(run):
    return os.path.join(run[0], "src")


def _tree_hash(path):
    digest = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                digest[os.path.relpath(p, path)] = hashlib.sha256(f.read()).hexdigest()
    return digest


# ---- the grown checkpoint loads at other layouts ------------------------------------------------
def test_grown_checkpoint_gives_the_single_process_loss_at_every_layout(run):
    layouts = run[1]["layouts"]
    reference = next(l for l in layouts if (l["tp"], l["pp"]) == (1, 1))
    for layout in layouts:
        assert layout["iteration"] == 0
        assert layout["loss"] == pytest.approx(reference["loss"], rel=1e-5, abs=1e-6), layout
        # the loss is the loaded weights', not the freshly built model's
        assert abs(layout["fresh_loss"] - layout["loss"]) > 1e-3, layout
    assert {(l["tp"], l["pp"], l["vp_layers"]) for l in layouts} >= {(1, 4, None), (2, 1, None)}
    assert sum(bool(l["split"]) for l in layouts) == 2  # uneven pipeline stages


def test_loaded_parameters_equal_the_grown_checkpoint(run):
    reference = next(l for l in run[1]["layouts"] if (l["tp"], l["pp"]) == (1, 1))
    assert reference["weight_mismatches"] == []


def test_layer_map_matches_megatron_placement(run):
    for layout in run[1]["layouts"]:
        expected: dict[int, list[list[int]]] = {}
        parallel = ParallelConfig(pipeline_model_parallel_size=layout["pp"],
                                  num_layers_per_virtual_pipeline_stage=layout["vp_layers"],
                                  **layout["split"])
        for layer, (stage, chunk) in enumerate(layer_stage_map(8, parallel)):
            chunks = expected.setdefault(stage, [])
            while len(chunks) <= chunk:
                chunks.append([])
            chunks[chunk].append(layer)
        got = {stage: json.loads(layers) for stage, layers in layout["placements"]}
        assert got == expected, layout


def test_metadata_json_is_what_megatron_writes(run):
    assert run[1]["config_matches_megatron"] is True


def test_keep_optimizer_state_loads_into_a_megatron_optimizer(run):
    opt = run[1]["optimizer"]
    assert opt["checked"] > 0 and opt["mismatches"] == []


# ---- what is written ----------------------------------------------------------------------------
def test_stack_equals_index_select_of_the_source_layers(run):
    source = DistCheckpointReader(os.path.join(run[0], "src", SRC_ITER))
    grown = DistCheckpointReader(os.path.join(run[0], "grown", "iter_0000000"))
    index = torch.tensor(PLAN)
    model_keys = [k for k in source.tensor_keys() if not k.startswith("optimizer.")]
    assert sorted(grown.tensor_keys()) == sorted(model_keys)  # optimizer state dropped
    for key in model_keys:
        want = source.load_tensor(key)
        if key.startswith("decoder.layers."):
            want = want.index_select(0, index)
        assert torch.equal(grown.load_tensor(key), want), key


def test_kept_adam_moments_are_stacked_like_their_weights(run):
    source = DistCheckpointReader(os.path.join(run[0], "src", SRC_ITER))
    grown = DistCheckpointReader(os.path.join(run[0], "grown_opt", "iter_0000000"))
    moments = [k for k in source.tensor_keys() if k.startswith("optimizer.state.exp_avg")]
    assert moments and sorted(grown.tensor_keys()) == sorted(source.tensor_keys())
    for key in moments:
        want = source.load_tensor(key)
        if ".decoder.layers." in key:
            want = want.index_select(0, torch.tensor(PLAN))
        assert torch.equal(grown.load_tensor(key), want), key
    assert "optimizer" in grown.load_common()


def test_common_state_describes_the_grown_model(run):
    root = os.path.join(run[0], "grown")
    assert sorted(os.listdir(root)) == ["iter_0000000", "latest_checkpointed_iteration.txt"]
    assert open(os.path.join(root, "latest_checkpointed_iteration.txt")).read().strip() == "0"
    reader = DistCheckpointReader(os.path.join(root, "iter_0000000"))
    common = reader.load_common()
    assert common["iteration"] == 0
    assert common["megastack"]["model"]["num_layers"] == 8
    assert common["megastack"]["parallel"]["tensor_model_parallel_size"] == 1
    assert common["megastack"]["parallel"]["pipeline_model_parallel_size"] == 4
    assert (common["args"].num_layers, common["args"].iteration) == (8, 0)
    assert common["args"].pipeline_model_parallel_size == 4
    assert common["consumed_train_samples"] == 8  # the data position carries on
    grown_from = common["grown_from"]
    assert grown_from["iteration"] == 3 and grown_from["stacking_list"] == PLAN
    assert grown_from["source_model"]["num_layers"] == 4
    for dropped in ("opt_param_scheduler", "optimizer", "rng_layout"):
        assert dropped not in common
    objects = reader.object_keys()
    assert not any(k.startswith("rng_state") for k in objects)
    extra = sorted(k for k in objects if k.startswith("decoder.layers.mlp.linear_fc2._extra_state"))
    assert extra == sorted(f"decoder.layers.mlp.linear_fc2._extra_state/shard_{i}_8" for i in range(8))


def test_one_layer_is_read_from_a_tensor_parallel_checkpoint(src):
    """DistCheckpointReader.load_layer (what tools/export_hf.py streams) assembles a layer from
    the chunks the tensor-parallel ranks wrote."""
    from megastack.checkpoint.dist_reader import DistCheckpointReader

    reader = DistCheckpointReader(os.path.join(src, SRC_ITER))
    keys = [k for k in reader.tensor_keys() if k.startswith("decoder.layers.")]
    split = [k for k in keys if any(tuple(c.sizes[1:]) != reader.shape(k)[1:]
                                    for c in reader.tensor_metadata(k).chunks)]
    assert split  # TP 2 wrote halves of the layers' matrices
    for key in keys:
        full = reader.load_tensor(key)
        for layer in range(full.shape[0]):
            assert torch.equal(reader.load_layer(key, layer), full[layer]), (key, layer)


def test_zero_operator_zeroes_repeats_and_leaves_the_source_untouched(src, tmp_path):
    before = _tree_hash(src)
    dst = str(tmp_path / "zero")
    report = grow_checkpoint(src, dst, stacking_list="0,1,2,3,0,1,2,3", operator="zero",
                             target_pipeline_parallel_size=2, fsync=False)
    assert _tree_hash(src) == before
    grown = DistCheckpointReader(report.checkpoint_dir)
    source = DistCheckpointReader(os.path.join(src, SRC_ITER))
    for key in ("decoder.layers.self_attention.linear_proj.weight", "decoder.layers.mlp.linear_fc2.weight"):
        out = grown.load_tensor(key)
        assert torch.equal(out[:4], source.load_tensor(key)) and not out[4:].any(), key
    qkv = "decoder.layers.self_attention.linear_qkv.weight"
    assert torch.equal(grown.load_tensor(qkv)[4:], source.load_tensor(qkv))
    assert [(r.target_layer, r.source_layer, r.stage) for r in report.layer_map][:5] == [
        (0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 0, 1)]
    assert report.optimizer_state == "dropped"


def test_shrink_keeps_the_first_layers(src, tmp_path):
    report = grow_checkpoint(src, str(tmp_path / "small"), stacking_list="0,1", operator="shrink",
                             target_tensor_parallel_size=1, target_pipeline_parallel_size=1,
                             fsync=False)
    grown = DistCheckpointReader(report.checkpoint_dir)
    source = DistCheckpointReader(os.path.join(src, SRC_ITER))
    key = "decoder.layers.mlp.linear_fc1.weight"
    assert torch.equal(grown.load_tensor(key), source.load_tensor(key)[:2])
    assert report.target_model.num_layers == 2


def test_width_growth_streams_through_the_width_operator(src, tmp_path):
    from megastack.config import ModelConfig
    from megastack.growth.width import WidthGrowth

    report = grow_checkpoint(src, str(tmp_path / "wide"), stacking_list="0-3*2",
                             target_hidden_size=128, target_num_attention_heads=8,
                             target_ffn_hidden_size=352, width_operator="direct",
                             target_pipeline_parallel_size=1, seed=7, fsync=False)
    assert (report.target_model.hidden_size, report.target_model.num_layers) == (128, 8)
    source = DistCheckpointReader(os.path.join(src, SRC_ITER))
    grown = DistCheckpointReader(report.checkpoint_dir)
    deep = ModelConfig.from_dict(source.load_common()["megastack"]["model"]).replace(num_layers=8)
    width = WidthGrowth(deep, report.target_model, "direct", seed=7)
    for key in ("embedding.word_embeddings.weight", "decoder.layers.self_attention.linear_qkv.weight",
                "decoder.layers.mlp.linear_fc1.weight"):
        want = source.load_tensor(key)
        if key.startswith("decoder.layers."):
            want = want.index_select(0, torch.tensor(PLAN))
        assert torch.equal(grown.load_tensor(key), width.transform(key, want)), key
    assert grown.load_common()["megastack"]["model"]["hidden_size"] == 128


# ---- bad input: clear errors, DST never created --------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(stacking_list="0-4*2"), r"source layer\(s\) \[4\].*4 layers"),
    (dict(stacking_list="0-3*2", target_num_layers=12), r"8 entries but --target-num-layers is 12"),
    (dict(stacking_list="0-3*2", target_pipeline_parallel_size=3), r"--target-pipeline-parallel-size 3.*not divisible"),
    (dict(stacking_list="0-3*2", target_tensor_parallel_size=3), r"--target-tensor-parallel-size 3.*heads"),
    (dict(stacking_list="0-3*2", target_pipeline_parallel_size=2,
          target_num_layers_per_virtual_pipeline_stage=3), r"virtual-pipeline-stage 3"),
    (dict(stacking_list="0-3*2", operator="grow"), r"--operator must be one of"),
    (dict(stacking_list="0,1,2,3,0", operator="shrink"), r"shrink"),
    (dict(stacking_list="0-3*2", keep_optimizer_state=True, target_hidden_size=128), r"--keep-optimizer-state"),
    (dict(stacking_list="0-3*2", target_num_attention_heads=0), r"--target-num-attention-heads must be >= 1"),
    (dict(stacking_list="0-3*2", target_num_query_groups=0), r"--target-num-query-groups must be >= 1"),
])
def test_bad_growth_requests_fail_before_writing(src, tmp_path, kwargs, message):
    before = _tree_hash(src)
    dst = str(tmp_path / "dst")
    with pytest.raises(ValueError, match=message):
        grow_checkpoint(src, dst, fsync=False, **kwargs)
    assert not os.path.exists(dst) and not glob.glob(dst + ".tmp-*")
    assert _tree_hash(src) == before


@pytest.mark.parametrize("damage", ["missing", "no_latest", "metadata.json", ".metadata", "shard"])
def test_missing_or_partial_sources_are_named(src, tmp_path, damage):
    broken = str(tmp_path / "src")
    shutil.copytree(src, broken)
    ckpt = os.path.join(broken, SRC_ITER)
    if damage == "missing":
        broken = str(tmp_path / "nowhere")
    elif damage == "no_latest":
        os.remove(os.path.join(broken, "latest_checkpointed_iteration.txt"))
    elif damage == "shard":
        os.remove(os.path.join(ckpt, sorted(f for f in os.listdir(ckpt) if f.endswith(".distcp"))[-1]))
    else:
        os.remove(os.path.join(ckpt, damage))
    dst = str(tmp_path / "dst")
    with pytest.raises(ValueError, match="nowhere|src") as err:
        grow_checkpoint(broken, dst, stacking_list="0-3*2", fsync=False)
    assert broken in str(err.value)
    assert not os.path.exists(dst) and not glob.glob(dst + ".tmp-*")


def test_destination_rules(src, tmp_path):
    dst = str(tmp_path / "dst")
    grow_checkpoint(src, dst, stacking_list="0-3*2", fsync=False)
    with pytest.raises(ValueError, match="exists and is not empty"):
        grow_checkpoint(src, dst, stacking_list="0-3*2", fsync=False)
    report = grow_checkpoint(src, dst, stacking_list="0,1,2,3,3,2,1,0", fsync=False, force=True)
    assert DistCheckpointReader(report.checkpoint_dir).load_common()["grown_from"]["stacking_list"] \
        == [0, 1, 2, 3, 3, 2, 1, 0]
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a grown checkpoint"):
        grow_checkpoint(src, str(user), stacking_list="0-3*2", fsync=False, force=True)
    assert (user / "notes.txt").read_text() == "keep me"
    for inside in (src, os.path.join(src, SRC_ITER, "grown")):
        with pytest.raises(ValueError, match="overlaps the source"):
            grow_checkpoint(src, inside, stacking_list="0-3*2", fsync=False)
    (tmp_path / "empty").mkdir()
    grow_checkpoint(src, str(tmp_path / "empty"), stacking_list="0-3*2", fsync=False)
    (tmp_path / "afile").write_text("")  # --save under a file: named, not a FileExistsError
    with pytest.raises(ValueError, match="afile is a file, not a directory"):
        grow_checkpoint(src, str(tmp_path / "afile" / "g"), stacking_list="0-3*2", fsync=False)


def test_data_beside_the_destination_is_never_touched(src, tmp_path):
    """Names derived from --save (DST.tmp, DST.old) may hold the source or the user's data: the
    tool works in a directory it creates itself and removes nothing else."""
    # the source itself named DST.tmp / DST.old
    for suffix, force in ((".tmp", False), (".old", True)):
        source = str(tmp_path / f"small{suffix}")
        shutil.copytree(src, source)
        before = _tree_hash(source)
        dst = str(tmp_path / "small")
        if force:
            grow_checkpoint(src, dst, stacking_list="0-3*2", fsync=False)
        grow_checkpoint(source, dst, stacking_list="0-3*2", fsync=False, force=force)
        assert _tree_hash(source) == before
        shutil.rmtree(dst)
    # unrelated data under those names
    for name in ("grown.tmp", "grown.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.txt").write_text("keep me")
    dst = str(tmp_path / "grown")
    grow_checkpoint(src, dst, stacking_list="0-3*2", fsync=False)
    grow_checkpoint(src, dst, stacking_list="0-3*2", fsync=False, force=True)
    for name in ("grown.tmp", "grown.old"):
        assert (tmp_path / name / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["small.tmp", "small.old", "grown", "grown.tmp", "grown.old"])


def test_megatron_release_checkpoint_root_is_a_source(src, tmp_path):
    """Megatron-LM keeps a release checkpoint in ROOT/release, named by 'release' in the latest
    file."""
    root = tmp_path / "rel"
    shutil.copytree(os.path.join(src, SRC_ITER), root / "release")
    (root / "latest_checkpointed_iteration.txt").write_text("release\n")
    from_release = grow_checkpoint(str(root), str(tmp_path / "a"), stacking_list="0-3*2",
                                   fsync=False)
    from_iter = grow_checkpoint(src, str(tmp_path / "b"), stacking_list="0-3*2", fsync=False)
    assert from_release.source_checkpoint == str(root / "release")
    a, b = (DistCheckpointReader(r.checkpoint_dir) for r in (from_release, from_iter))
    assert a.tensor_keys() == b.tensor_keys()
    for key in a.tensor_keys():
        assert torch.equal(a.load_tensor(key), b.load_tensor(key)), key


def test_grown_checkpoint_gets_the_umask_mode(src, tmp_path):
    old = os.umask(0o022)
    try:
        report = grow_checkpoint(src, str(tmp_path / "dst"), stacking_list="0-3*2", fsync=False)
    finally:
        os.umask(old)
    assert os.stat(report.destination).st_mode & 0o777 == 0o755


def test_optimizer_objects_are_dropped_with_the_optimizer_state(src, tmp_path):
    from megastack.checkpoint.dist_writer import DistCheckpointWriter

    # a distributed-optimizer-like source: opaque optimizer.* objects next to the model
    source = DistCheckpointReader(os.path.join(src, SRC_ITER))
    root = tmp_path / "dsrc"
    writer = DistCheckpointWriter(str(root / SRC_ITER), fsync=False)
    for key in source.tensor_keys():
        writer.add_tensor(key, source.shape(key), source.dtype(key),
                          lambda key=key: source.load_tensor(key),
                          layer_stacked=key.startswith("decoder.layers."))
    for key in source.object_keys():
        writer.add_object(key, lambda key=key: source.load_object_bytes(key))
    writer.add_object("optimizer.distributed.dp_group_idx_0.param_state/shard_0_1", lambda: b"opaque")
    writer.write(source.load_common())
    (root / "latest_checkpointed_iteration.txt").write_text("3")

    report = grow_checkpoint(str(root), str(tmp_path / "dst"), stacking_list="0-3*2", fsync=False)
    assert not any(k.startswith("optimizer.") for k in
                   DistCheckpointReader(report.checkpoint_dir).object_keys())
    with pytest.raises(ValueError, match="opaque state"):
        grow_checkpoint(str(root), str(tmp_path / "dst2"), stacking_list="0-3*2",
                        keep_optimizer_state=True, fsync=False)
    assert not os.path.exists(tmp_path / "dst2")


def test_an_error_while_streaming_removes_the_partial_output(src, tmp_path, monkeypatch):
    from megastack.growth import grow_checkpoint as module

    calls = []

    def failing(self, key, tensor):
        calls.append(key)
        if len(calls) == 3:
            raise ValueError("operator failed on purpose")
        return tensor.index_select(0, torch.tensor(PLAN)) if "decoder.layers." in key else tensor

    monkeypatch.setattr(module.DepthGrowth, "transform", failing)
    dst = str(tmp_path / "dst")
    with pytest.raises(ValueError, match="on purpose"):
        grow_checkpoint(src, dst, stacking_list="0-3*2", fsync=False)
    assert not os.path.exists(dst) and not glob.glob(dst + ".tmp-*")


# ---- the tool -------------------------------------------------------------------------------------
def _tool():
    return load_script("tools/grow_checkpoint.py")


def test_tool_prints_the_map_and_summary(src, tmp_path, capsys):
    rc = _tool().main(["--load", src, "--save", str(tmp_path / "dst"), "--stacking-list", "0-3*2",
                       "--target-pipeline-parallel-size", "2",
                       "--target-num-layers-per-virtual-pipeline-stage", "2", "--no-fsync"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert "target layer" in lines[0] and "stage (chunk)" in lines[0]
    assert lines[5].split() == ["4", "->", "0", "->", "0", "(1)"]
    assert "depth operator: stack" in out and "TP2 PP2" in out and "VP 2 layers/chunk" in out
    assert "--growth-mask-iters" not in out
    rc = _tool().main(["--load", src, "--save", str(tmp_path / "random"), "--stacking-list",
                       "0-3*2", "--operator", "random", "--no-fsync"])
    assert rc == 0 and "train it with --growth-mask-iters N" in capsys.readouterr().out


def test_tool_exits_non_zero_with_the_message(src, tmp_path, capsys):
    rc = _tool().main(["--load", src, "--save", str(tmp_path / "dst"), "--stacking-list", "0-9"])
    assert rc != 0
    assert "error: --stacking-list refers to source layer(s)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "dst")


def test_sigterm_removes_the_temporary_directory(src, tmp_path):
    """A cancelled job (SIGTERM) left DST.tmp-XXXXXXXX behind; Ctrl-C did not."""
    import signal

    dst = str(tmp_path / "dst")
    script = (
        "import sys, time\n"
        "import megastack.checkpoint.output_dir as g\n"
        "def slow_publish(*args):\n"
        "    print('written', flush=True)\n"
        "    time.sleep(120)\n"
        "g.publish = slow_publish\n"
        "from tests.scripts import load_script\n"
        f"sys.exit(load_script('tools/grow_checkpoint.py').main(['--load', {src!r}, '--save', "
        f"{dst!r}, '--stacking-list', '0-3*2', '--no-fsync']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "written"  # everything is in the temporary dir
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert not glob.glob(dst + ".tmp-*") and not os.path.exists(dst)


def test_tool_takes_pretrains_growth_flag_names():
    tool = load_script("tools/grow_checkpoint.py")
    args = tool.get_args(["--load", "a", "--save", "b", "--stacking-list", "0-1*2",
                          "--growth-operator", "zero", "--target-tensor-model-parallel-size", "2",
                          "--target-pipeline-model-parallel-size", "4"])
    assert (args.operator, args.target_tensor_parallel_size,
            args.target_pipeline_parallel_size) == ("zero", 2, 4)


def test_inherited_virtual_stages_are_named_and_can_be_turned_off():
    from megastack.config import ModelConfig, ParallelConfig
    from megastack.growth.grow_checkpoint import _target_parallel

    src = ParallelConfig(pipeline_model_parallel_size=2, num_layers_per_virtual_pipeline_stage=2)
    six = ModelConfig.from_name("tiny-4l").replace(num_layers=6)  # 3 layers per stage
    with pytest.raises(ValueError, match="the 2 layers per virtual stage are the source's.*or 0 "
                                         "for no interleaving"):
        _target_parallel(src, six, None, None, None)
    assert _target_parallel(src, six, None, None, 0).num_layers_per_virtual_pipeline_stage is None
    eight = six.replace(num_layers=8)
    assert _target_parallel(src, eight, None, None, None).num_layers_per_virtual_pipeline_stage == 2
