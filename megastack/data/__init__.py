"""megastack.data: tokenizers, JSON lines -> Megatron indexed datasets, GPT datasets.

Importing this package is cheap; megatron-core (and torch) load only when a function needs them.
"""

from megastack.data.datasets import build_gpt_datasets, parse_data_path
from megastack.data.jsonl_reader import BadInputError
from megastack.data.merge import merge_datasets
from megastack.data.preprocessing import PreprocessConfig, PreprocessResult, preprocess
from megastack.data.tokenizer_training import TokenizerTrainingConfig, train_sentencepiece
from megastack.data.tokenizers import (TOKENIZER_TYPES, TokenizerSpec, build_text_tokenizer,
                                       build_tokenizer)

__all__ = [
    "BadInputError", "PreprocessConfig", "PreprocessResult", "TOKENIZER_TYPES",
    "TokenizerSpec", "TokenizerTrainingConfig", "build_gpt_datasets", "build_text_tokenizer",
    "build_tokenizer", "merge_datasets", "parse_data_path", "preprocess", "train_sentencepiece",
]
