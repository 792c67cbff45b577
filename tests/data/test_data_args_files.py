"""--data-args-path and --per-split-data-args-path: Megatron-LM's dataset lists kept in files."""

import json

import pytest

from megastack.data.data_args_files import read_data_args_file, read_per_split_data_args_file


def test_data_args_file_holds_the_data_path_words(tmp_path):
    f = tmp_path / "blend.txt"
    f.write_text("# web and code\n0.7 data/web_text_document\n0.3 data/code_text_document  # x\n")
    assert read_data_args_file(str(f)) == ["0.7", "data/web_text_document", "0.3",
                                           "data/code_text_document"]


def test_missing_or_empty_data_args_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"--data-args-path {tmp_path / 'nope'}: no such file"):
        read_data_args_file(str(tmp_path / "nope"))
    f = tmp_path / "empty.txt"
    f.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match=f"--data-args-path {f}: the file names no datasets"):
        read_data_args_file(str(f))


def test_per_split_file_takes_strings_flat_lists_and_pairs(tmp_path):
    f = tmp_path / "splits.json"
    f.write_text(json.dumps({"train": [[0.7, "a"], [0.3, "b"]], "valid": "c d",
                             "test": ["1", "e"]}))
    assert read_per_split_data_args_file(str(f)) == (["0.7", "a", "0.3", "b"], ["c", "d"],
                                                     ["1", "e"])
    f.write_text(json.dumps({"train": ["a"]}))
    assert read_per_split_data_args_file(str(f)) == (["a"], [], [])


@pytest.mark.parametrize("text, message", [
    ('{"train": ["a"],\n "valid": [b]}', "line 2, column 12"),
    ('["a"]', "must hold a JSON object"),
    ('{"train": "a", "validation": "b"}', "unknown key(s) 'validation'"),
    ('{"valid": "b"}', 'no "train" entry'),
    ('{"train": {"a": 1}}', '"train" must be a string or a list'),
    ('{"train": [[1, "a", "b"]]}', "is not a [weight, prefix] pair"),
    ('{"train": [true]}', "neither a prefix, a weight nor"),
])
def test_bad_per_split_file_names_file_and_fault(tmp_path, text, message):
    f = tmp_path / "splits.json"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        read_per_split_data_args_file(str(f))
    assert str(e.value).startswith(f"--per-split-data-args-path {f}: ")
    assert message in str(e.value)
