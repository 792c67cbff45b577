"""--data-path parsing: Megatron's plain prefixes or 'weight prefix' pairs."""

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
