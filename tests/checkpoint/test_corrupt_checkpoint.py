"""A corrupt (truncated, empty, malformed) torch_dist checkpoint file is a ValueError naming it.

Missing files keep their own messages (tests/checkpoint/test_dist_reader_writer.py); these are
files that exist but cannot be parsed, which used to surface as a raw UnpicklingError, EOFError,
RuntimeError or a JSONDecodeError that named no file.
"""

import os

import pytest
import torch

from megastack.checkpoint.dist_reader import DistCheckpointReader
from megastack.checkpoint.dist_writer import DistCheckpointWriter


def _write(path):
    writer = DistCheckpointWriter(path, fsync=False)
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    writer.add_tensor("decoder.layers.w", tuple(t.shape), t.dtype, lambda: t.clone(),
                      layer_stacked=True)
    writer.write({"iteration": 7, "note": "hi"})


def _truncate(file):
    size = os.path.getsize(file)
    with open(file, "r+b") as f:
        f.truncate(size // 2)


def _empty(file):
    open(file, "w").close()


def _json_list(file):
    with open(file, "w") as f:
        f.write("[]")


def _directory(file):
    os.remove(file)
    os.mkdir(file)


@pytest.mark.parametrize("name, damage", [
    (".metadata", _truncate),
    (".metadata", _empty),
    (".metadata", _directory),
    ("metadata.json", _empty),
    ("metadata.json", _json_list),
    ("metadata.json", _truncate),
    ("common.pt", _truncate),
    ("common.pt", _empty),
], ids=lambda v: getattr(v, "__name__", v))
def test_corrupt_checkpoint_file_is_a_value_error_naming_it(tmp_path, name, damage):
    path = str(tmp_path / "iter_0000007")
    _write(path)
    assert DistCheckpointReader(path).load_common() == {"iteration": 7, "note": "hi"}
    file = os.path.join(path, name)
    damage(file)
    with pytest.raises(ValueError) as err:
        DistCheckpointReader(path).load_common()
    message = str(err.value)
    assert file in message, message
    assert "unreadable or truncated" in message and "--load" in message, message
