"""Model-free torch_dist writer -> reader round trips (no megatron-core model, single process).

That megatron-core itself loads what the writer produces, at several layouts, is checked by
tests/growth/test_grow_checkpoint.py through tests/checkpoint/dist_worker.py.
"""

import io
import json
import os

import pytest
import torch

from megastack.checkpoint.dist_reader import DistCheckpointReader, check_complete
from megastack.checkpoint.dist_writer import TORCH_DIST_CONFIG, DistCheckpointWriter

LAYERS = 3


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "embedding.word_embeddings.weight": torch.randn(16, 8, generator=gen),
        "decoder.layers.self_attention.linear_qkv.weight": torch.randn(LAYERS, 24, 8, generator=gen),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": torch.randn(LAYERS, 8, generator=gen).bfloat16(),
        "decoder.final_layernorm.weight": torch.randn(8, generator=gen),
        "scalar": torch.tensor(3.5),
    }


def _objects():
    out = {}
    for i in range(LAYERS):
        buf = io.BytesIO()
        torch.save([{"layer": i}], buf)
        out[f"decoder.layers.mlp.linear_fc1._extra_state/shard_{i}_{LAYERS}"] = buf.getvalue()
    return out


def _write(path, tensors, objects, calls=None):
    writer = DistCheckpointWriter(path, fsync=False)
    for key, t in tensors.items():
        def produce(key=key, t=t):
            if calls is not None:
                calls.append(key)
            return t.clone()
        writer.add_tensor(key, tuple(t.shape), t.dtype, produce,
                          layer_stacked=key.startswith("decoder.layers."))
    for key, b in objects.items():
        writer.add_object(key, lambda b=b: b)
    return writer.write({"iteration": 7, "note": "hi"})


def test_round_trip_keeps_every_tensor_object_and_common(tmp_path):
    path = str(tmp_path / "ckpt")
    tensors, objects = _tensors(), _objects()
    stats = _write(path, tensors, objects)
    assert (stats.tensors, stats.objects) == (len(tensors), len(objects))

    reader = DistCheckpointReader(path)
    assert sorted(reader.tensor_keys()) == sorted(tensors)
    assert sorted(reader.object_keys()) == sorted(objects)
    for key, t in tensors.items():
        assert reader.shape(key) == tuple(t.shape) and reader.dtype(key) == t.dtype
        assert torch.equal(reader.load_tensor(key), t), key
    for key, b in objects.items():
        assert reader.load_object_bytes(key) == b
    assert reader.load_common() == {"iteration": 7, "note": "hi"}
    with open(os.path.join(path, "metadata.json")) as f:
        assert json.load(f) == TORCH_DIST_CONFIG


def test_layer_stacked_keys_are_written_one_chunk_per_layer_like_megatron(tmp_path):
    path = str(tmp_path / "ckpt")
    _write(path, _tensors(), {})
    md = DistCheckpointReader(path).metadata.state_dict_metadata
    qkv = md["decoder.layers.self_attention.linear_qkv.weight"]
    assert [tuple(c.offsets) for c in qkv.chunks] == [(i, 0, 0) for i in range(LAYERS)]
    assert all(tuple(c.sizes) == (1, 24, 8) for c in qkv.chunks)
    assert len(md["embedding.word_embeddings.weight"].chunks) == 1


def test_each_tensor_is_produced_once_in_plan_order(tmp_path):
    calls = []
    tensors = _tensors()
    stats = _write(str(tmp_path / "ckpt"), tensors, _objects(), calls)
    assert calls == list(tensors)  # streamed: one producer call per key, keys in order
    assert stats.produced == stats.tensors


def test_load_tensor_into_preallocated_out(tmp_path):
    path = str(tmp_path / "ckpt")
    tensors = _tensors()
    _write(path, tensors, {})
    reader = DistCheckpointReader(path)
    key = "decoder.layers.self_attention.linear_qkv.weight"
    out = torch.empty(LAYERS, 24, 8)
    assert reader.load_tensor(key, out) is out and torch.equal(out, tensors[key])
    with pytest.raises(ValueError, match="out has"):
        reader.load_tensor(key, torch.empty(2, 24, 8))


def test_load_layer_reads_one_layer_of_a_stacked_key(tmp_path):
    path = str(tmp_path / "ckpt")
    tensors = _tensors()
    _write(path, tensors, {})
    reader = DistCheckpointReader(path)
    for key in ("decoder.layers.self_attention.linear_qkv.weight",
                "decoder.layers.mlp.linear_fc1.layer_norm_weight"):
        for layer in range(LAYERS):
            got = reader.load_layer(key, layer)
            assert got.dtype == tensors[key].dtype and torch.equal(got, tensors[key][layer])
    with pytest.raises(IndexError, match="layer 3 of a tensor of shape"):
        reader.load_layer("decoder.layers.self_attention.linear_qkv.weight", LAYERS)


def test_producer_with_the_wrong_shape_is_an_error(tmp_path):
    writer = DistCheckpointWriter(str(tmp_path / "ckpt"), fsync=False)
    writer.add_tensor("a", (2, 3), torch.float32, lambda: torch.zeros(3, 2))
    with pytest.raises(ValueError, match="declared"):
        writer.write({})


def test_duplicate_keys_and_non_empty_directories_are_refused(tmp_path):
    writer = DistCheckpointWriter(str(tmp_path / "ckpt"))
    writer.add_tensor("a", (1,), torch.float32, lambda: torch.zeros(1))
    with pytest.raises(ValueError, match="added twice"):
        writer.add_object("a", lambda: b"")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("user data")
    with pytest.raises(ValueError, match="already holds files"):
        DistCheckpointWriter(str(tmp_path / "full"))


@pytest.mark.parametrize("damage, message", [
    ("no_dir", "does not exist"),
    ("metadata.json", "metadata.json is missing"),
    (".metadata", ".metadata is missing"),
    ("common.pt", "common.pt is missing"),
    ("shard", "shard file __0_0.distcp is missing"),
    ("truncate", "__0_0.distcp has"),
    ("backend", "only torch_dist"),
])
def test_partial_checkpoints_are_reported_with_their_path(tmp_path, damage, message):
    path = str(tmp_path / "ckpt")
    _write(path, _tensors(), _objects())
    if damage == "no_dir":
        path = str(tmp_path / "nowhere")
    elif damage == "shard":
        os.remove(os.path.join(path, "__0_0.distcp"))
    elif damage == "truncate":
        shard = os.path.join(path, "__0_0.distcp")
        os.truncate(shard, os.path.getsize(shard) - 10)
    elif damage == "backend":
        with open(os.path.join(path, "metadata.json"), "w") as f:
            json.dump({**TORCH_DIST_CONFIG, "sharded_backend": "zarr"}, f)
    else:
        os.remove(os.path.join(path, damage))
    with pytest.raises(ValueError, match=message) as err:
        check_complete(path)
    assert path in str(err.value) or damage == "backend"


def test_rows_gather_source_layers_on_write(tmp_path):
    path = str(tmp_path / "ckpt")
    source = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    rows = [0, 1, 2, 2, 1, 0, 0]
    writer = DistCheckpointWriter(path, fsync=False)
    writer.add_tensor("decoder.layers.w", (len(rows), 4, 5), torch.float32, lambda: source,
                      layer_stacked=True, rows=rows)
    writer.add_tensor("decoder.layers.one", (1, 2), torch.float32, lambda: source[:, 0, :2].clone(),
                      layer_stacked=True, rows=[2])
    writer.write({})
    reader = DistCheckpointReader(path)
    assert torch.equal(reader.load_tensor("decoder.layers.w"), source.index_select(0, torch.tensor(rows)))
    assert torch.equal(reader.load_tensor("decoder.layers.one"), source[2:3, 0, :2])
    with pytest.raises(ValueError, match="one non-negative source row per layer"):
        DistCheckpointWriter(str(tmp_path / "x")).add_tensor(
            "k", (2, 3), torch.float32, lambda: source, layer_stacked=True, rows=[0])


def test_layer_producers_are_called_once_per_layer(tmp_path):
    """produce_layer: one layer in memory at a time (the HF import's streaming)."""
    path = str(tmp_path / "ckpt")
    stacked = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(2))
    calls = []

    def layer(i):
        calls.append(i)
        return stacked[i].clone()

    writer = DistCheckpointWriter(path, fsync=False)
    writer.add_tensor("decoder.layers.w", tuple(stacked.shape), torch.float32, None,
                      layer_stacked=True, produce_layer=layer)
    assert writer.write({}).produced == 4
    assert calls == [0, 1, 2, 3]
    assert torch.equal(DistCheckpointReader(path).load_tensor("decoder.layers.w"), stacked)
    bad = DistCheckpointWriter(str(tmp_path / "bad"), fsync=False)
    bad.add_tensor("decoder.layers.w", (2, 3, 2), torch.float32, None, layer_stacked=True,
                   produce_layer=lambda i: torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"decoder.layers.w: produced a layer of \(3, 3\)"):
        bad.write({})


def test_layer_records_are_copied_verbatim_and_load_as_the_stacked_tensor(tmp_path):
    src = str(tmp_path / "src")
    tensors = _tensors()
    _write(src, tensors, {})
    source = DistCheckpointReader(src)
    key = "decoder.layers.self_attention.linear_qkv.weight"
    records = source.layer_records(key)
    assert [r.length > 0 for r in records] == [True] * LAYERS
    assert source.layer_records("embedding.word_embeddings.weight") is None  # not per layer

    rows = [2, 0, 1, 1, 0, 2]
    calls = []
    writer = DistCheckpointWriter(str(tmp_path / "grown"), fsync=False)
    for k in (key, "decoder.layers.mlp.linear_fc1.layer_norm_weight"):
        t = tensors[k]
        writer.add_tensor(k, (len(rows),) + tuple(t.shape[1:]), t.dtype,
                          lambda k=k: calls.append(k) or tensors[k],
                          layer_stacked=True, rows=rows,
                          records=[source.layer_records(k)[r] for r in rows])
    stats = writer.write({})
    assert (stats.copied_records, stats.produced, calls) == (2 * len(rows), 0, [])
    grown = DistCheckpointReader(str(tmp_path / "grown"))
    for k in (key, "decoder.layers.mlp.linear_fc1.layer_norm_weight"):
        assert torch.equal(grown.load_tensor(k), tensors[k].index_select(0, torch.tensor(rows)))
        assert grown.load_tensor(k).dtype == tensors[k].dtype


def test_layer_records_need_one_whole_layer_per_chunk(tmp_path):
    """A key stored in pieces (as tensor parallelism splits it) has no reusable layer record."""
    path = str(tmp_path / "ckpt")
    writer = DistCheckpointWriter(path, fsync=False)
    full = torch.randn(2, 4, 3)
    writer.add_tensor("decoder.layers.w", (2, 4, 3), torch.float32, lambda: full,
                      layer_stacked=True)
    writer.write({})
    reader = DistCheckpointReader(path)
    assert reader.layer_records("decoder.layers.w") is not None
    md = reader.tensor_metadata("decoder.layers.w")
    chunk = md.chunks[0]
    md.chunks[0] = type(chunk)(offsets=chunk.offsets, sizes=torch.Size((1, 2, 3)))
    assert reader.layer_records("decoder.layers.w") is None


def test_a_truncated_record_source_is_named(tmp_path):
    src = str(tmp_path / "src")
    _write(src, _tensors(), {})
    source = DistCheckpointReader(src)
    key = "decoder.layers.self_attention.linear_qkv.weight"
    records = source.layer_records(key)
    shard = records[-1].path
    with open(shard, "r+b") as f:
        f.truncate(records[-1].offset + 1)
    writer = DistCheckpointWriter(str(tmp_path / "grown"), fsync=False)
    writer.add_tensor(key, (1, 24, 8), torch.float32, lambda: None, layer_stacked=True,
                      records=[records[-1]])
    with pytest.raises(ValueError, match="truncated"):
        writer.write({})


def test_records_and_tensors_survive_short_writes_and_no_copy_file_range(tmp_path, monkeypatch):
    """Without copy_file_range (EXDEV: another file system) records are copied by reads, and
    write(2) returning short counts (as it does past 2 GiB) loses no bytes."""
    import errno

    src = str(tmp_path / "src")
    tensors = _tensors()
    _write(src, tensors, _objects())
    source = DistCheckpointReader(src)
    key = "decoder.layers.self_attention.linear_qkv.weight"

    def no_copy_file_range(*args):
        raise OSError(errno.EXDEV, "cross-device")

    real_write = os.write
    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    rows = [1, 1, 0]
    writer = DistCheckpointWriter(str(tmp_path / "grown"), fsync=False)
    writer.add_tensor(key, (3, 24, 8), torch.float32, lambda: tensors[key], layer_stacked=True,
                      rows=rows, records=[source.layer_records(key)[r] for r in rows])
    emb = "embedding.word_embeddings.weight"
    writer.add_tensor(emb, (16, 8), torch.float32, lambda: tensors[emb].clone())
    for k, b in _objects().items():
        writer.add_object(k, lambda b=b: b)
    assert writer.write({}).copied_records == 3
    monkeypatch.undo()
    grown = DistCheckpointReader(str(tmp_path / "grown"))
    assert torch.equal(grown.load_tensor(key), tensors[key].index_select(0, torch.tensor(rows)))
    assert torch.equal(grown.load_tensor(emb), tensors[emb])
    for k, b in _objects().items():
        assert grown.load_object_bytes(k) == b
