"""NLTK punkt_tab sentence splitting, loaded from a local directory (never downloaded).

Matches Megatron-LM's --split-sentences: the same punkt parameters, the same
newline-preserving variant for --keep-newlines, and the same 1,000,000-character chunking of
long documents before splitting.
"""

import os
from typing import List, Optional

# Megatron-LM splits documents in pieces of this many characters before running punkt.
_SPLIT_CHUNK_CHARS = 1_000_000


def find_nltk_data_root(nltk_data: Optional[str], lang: str = "english") -> str:
    """The NLTK data directory (from --nltk-data, else $NLTK_DATA) holding punkt_tab/<lang>."""
    roots = [r for r in (nltk_data, os.environ.get("NLTK_DATA")) if r]
    if not roots:
        raise ValueError("--split-sentences needs NLTK's punkt_tab model: pass --nltk-data DIR "
                         "or set NLTK_DATA (DIR/tokenizers/punkt_tab/<lang>/ must exist); "
                         "this tool never downloads it")
    for root in roots:
        for base in root.split(os.pathsep):
            candidate = os.path.join(base, "tokenizers", "punkt_tab", lang)
            if os.path.isfile(os.path.join(candidate, "sent_starters.txt")):
                return os.path.abspath(base)
    raise ValueError(f"no punkt_tab model for {lang!r} under {roots}: expected "
                     f"<dir>/tokenizers/punkt_tab/{lang}/sent_starters.txt")


class SentenceSplitter:
    def __init__(self, nltk_data_root: str, lang: str, keep_newlines: bool) -> None:
        import nltk
        from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTokenizer

        # NLTK only opens model files under nltk.data.path roots; put ours first so it wins.
        if nltk_data_root not in nltk.data.path:
            nltk.data.path.insert(0, nltk_data_root)
        punkt = PunktTokenizer(lang)
        if keep_newlines:
            punkt = PunktSentenceTokenizer(punkt._params, lang_vars=_newline_keeping_lang_vars())
        self._punkt = punkt

    def split(self, text: str) -> List[str]:
        return [sentence for start in range(0, len(text), _SPLIT_CHUNK_CHARS)
                for sentence in self._punkt.tokenize(text[start:start + _SPLIT_CHUNK_CHARS])]


def _newline_keeping_lang_vars():
    from nltk.tokenize.punkt import PunktLanguageVars

    class NewlineKeepingLanguageVars(PunktLanguageVars):
        # Megatron-LM's CustomLanguageVars: the whitespace after a sentence end stays with that
        # sentence (\s* instead of \s+), so newlines survive the split.
        _period_context_fmt = r"""
            \S*                          # some word material
            %(SentEndChars)s             # a potential sentence ending
            \s*                          # trailing whitespace, newlines included
            (?=(?P<after_tok>
                %(NonWord)s              # either other punctuation
                |
                (?P<next_tok>\S+)        # or the next word
            ))"""

    return NewlineKeepingLanguageVars()
