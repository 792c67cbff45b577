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
