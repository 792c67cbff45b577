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


def _dataset(prefix, first_token, docs=40, length=50):
    from megastack.data.indexed_writer import IndexedDatasetWriter

    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        for d in range(docs):
            writer.add_document([first_token] * (length - 1) + [0], [length])
        writer.finalize()
    return prefix


def test_per_split_data_paths_build_each_split_from_its_own_data(tmp_path):
    """Megatron-LM's --train-data-path/--valid-data-path/--test-data-path were refused."""
    from megastack.data.datasets import build_gpt_datasets
    from megastack.data.tokenizers import build_tokenizer

    train = _dataset(str(tmp_path / "train"), 7)
    valid = _dataset(str(tmp_path / "valid"), 9)
    tokenizer = build_tokenizer("NullTokenizer", vocab_size=15)
    common = dict(data_path=None, split="969,30,1", seq_length=16, seed=1, tokenizer=tokenizer,
                  train_valid_test_num_samples=(8, 4, 4), path_to_cache=str(tmp_path / "cache"),
                  model_vocab_size=16)
    tr, va, te = build_gpt_datasets(per_split_data_path=([train], [valid], []), **common)
    assert te is None  # no --test-data-path: no test split, as in Megatron-LM
    assert set(np.unique(tr[0]["tokens"].numpy())) <= {0, 7}
    assert set(np.unique(va[0]["tokens"].numpy())) <= {0, 9}
    with pytest.raises(ValueError, match="--train-data-path is needed"):
        build_gpt_datasets(per_split_data_path=([], [valid], []), **common)
    with pytest.raises(ValueError, match="not both"):
        build_gpt_datasets(**dict(common, data_path=[train]),
                           per_split_data_path=([train], [valid], []))
    with pytest.raises(ValueError, match=f"--valid-data-path {str(tmp_path / 'nope')!r}"):
        build_gpt_datasets(per_split_data_path=([train], [str(tmp_path / "nope")], []),
                           **common)
