"""megastack's tokenizers with megatron-core's ``MegatronLegacyTokenizer`` as a base class.

Kept apart from tokenizers.py because importing megatron-core costs seconds; preprocessing never
needs it. The classes live at module level so pickling (e.g. DataLoader workers under spawn)
finds them.
"""

from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

from megastack.data import tokenizers


class GPT2BPETokenizer(tokenizers.GPT2BPETokenizer, MegatronLegacyTokenizer):
    """GPT-2 byte-level BPE, usable wherever megatron-core expects a tokenizer."""


class SentencePieceTokenizer(tokenizers.SentencePieceTokenizer, MegatronLegacyTokenizer):
    """SentencePiece, usable wherever megatron-core expects a tokenizer."""


class HuggingFaceTokenizer(tokenizers.HuggingFaceTokenizer, MegatronLegacyTokenizer):
    """HuggingFace tokenizer.json, usable wherever megatron-core expects a tokenizer."""


class NullTokenizer(tokenizers.NullTokenizer, MegatronLegacyTokenizer):
    """NullTokenizer, usable wherever megatron-core expects a tokenizer."""
