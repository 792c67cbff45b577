"""--data-path parsing: Megatron's plain prefixes or 'weight prefix' pairs."""

import numpy as np
import pytest

from megastack.data.datasets import parse_data_path


def test_prefixes_and_weighted_pairs():
    assert parse_data_path(["a", "b"]) == (["a", "b"], None)
    assert parse_data_path(["0.3 a 0.7", "b"]) == (["a", "b"], [0.3, 0.7])


def test_a_weight_without_its_prefix_is_named():
    with pytest.raises(ValueError) as e:
        parse_data_path(["0.3", "a", "0.7"])
    assert "'weight prefix' pairs" in str(e.value) and "0.3 a 0.7" in str(e.value)


def test_weights_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        parse_data_path(["0", "a", "1", "b"])


def test_token_ids_beyond_the_tokenizer_are_named(tmp_path):
    """A dataset tokenized with a larger vocabulary failed inside the embedding."""
    from megastack.data.datasets import check_token_ids_fit
    from megastack.data.indexed_writer import IndexedDatasetWriter, optimal_token_dtype

    prefix = str(tmp_path / "d")
    writer = IndexedDatasetWriter(prefix, optimal_token_dtype(5000))
    writer.add_document([5, 17, 4095, 2], [4])
    writer.add_document([9, 1], [2])
    writer.finalize()
    check_token_ids_fit([prefix], 4096)
    with pytest.raises(ValueError) as e:
        check_token_ids_fit([prefix], 301)
    assert f"--data-path {prefix}: holds token id 4095" in str(e.value)
    assert "model's vocabulary of 301" in str(e.value)


def test_truncated_bin_or_idx_is_named_before_training(tmp_path):
    """A cut .bin failed in megatron-core with 'buffer is smaller than requested size',
    naming no file."""
    from megastack.data.datasets import check_prefixes_exist
    from megastack.data.indexed_writer import IndexedDatasetWriter

    prefix = str(tmp_path / "d_text_document")
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_document(list(range(100)), [100])
        writer.add_document([], [])  # an empty document is fine: zero sequences
        writer.finalize()
    check_prefixes_exist([prefix])
    data = (tmp_path / "d_text_document.bin").read_bytes()
    (tmp_path / "d_text_document.bin").write_bytes(data[:150])
    with pytest.raises(ValueError) as e:
        check_prefixes_exist([prefix])
    assert str(e.value).startswith(f"--data-path {prefix!r}: {prefix}.bin has 150 bytes but "
                                   f"{prefix}.idx describes 200")
    assert "re-run tools/preprocess_data.py" in str(e.value)
    (tmp_path / "d_text_document.bin").write_bytes(data)
    index = (tmp_path / "d_text_document.idx").read_bytes()
    (tmp_path / "d_text_document.idx").write_bytes(index[:-4])
    with pytest.raises(ValueError, match=f"--data-path .*{prefix}.idx has .* the index is "
                                         "truncated"):
        check_prefixes_exist([prefix])
