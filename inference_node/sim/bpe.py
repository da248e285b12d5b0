"""A byte-level BPE tokenizer read from a Hugging Face ``tokenizer.json``, so the simulator counts like a real model.

It reads the GPT-2 family's layout (what ``scripts/vllm/build_tiny_model.py`` writes for the model the test
tier's vLLM serves): added special tokens matched literally, the ``ByteLevel`` pre-tokenizer with its
regex, ``BPE`` merges by rank, and a ``TemplateProcessing`` post-processor that puts BOS in front.
Anything else in the file is refused at load time rather than tokenized differently.
"""

from __future__ import annotations

import itertools
import json
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import regex

# GPT-2's pre-tokenizer pattern, as the ByteLevel pre-tokenizer applies it (`use_regex: true`).
_BYTE_LEVEL_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


class UnsupportedTokenizer(ValueError):
    """A tokenizer.json whose pipeline this reader does not implement."""


@cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values onto printable characters (space becomes "Ġ")."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    shift = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shift)
            shift += 1
    return mapping


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise UnsupportedTokenizer(f"unsupported tokenizer.json: {what}")


class ByteLevelBpeTokenizer:
    """Encodes text exactly as the ``tokenizers`` library does for a byte-level BPE ``tokenizer.json``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        model, pre, post = spec.get("model") or {}, spec.get("pre_tokenizer") or {}, spec.get("post_processor")
        _expect(model.get("type") == "BPE", "the model must be BPE")
        _expect(not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix"),
                "BPE without subword prefixes or suffixes")  # fmt: skip
        _expect(spec.get("normalizer") is None, "no normalizer")
        _expect(pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"),
                "a ByteLevel pre-tokenizer with its regex and no prefix space")  # fmt: skip
        self._vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self._ranks: dict[tuple[str, str], int] = {(a, b): rank for rank, (a, b) in enumerate(merges)}
        self._added = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
        _expect(all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word") or t.get("normalized"))
                    for t in spec.get("added_tokens", [])), "added tokens matched literally")  # fmt: skip
        # Longest first, so a token that begins another never wins the match.
        names = sorted(self._added, key=len, reverse=True)
        self._added_pattern = regex.compile("|".join(regex.escape(name) for name in names)) if names else None
        self._prefix: list[str] = []
        if post is not None:
            _expect(post.get("type") == "TemplateProcessing", "a TemplateProcessing post-processor")
            single = post["single"]
            _expect(single[-1] == {"Sequence": {"id": "A", "type_id": 0}}, "special tokens only before the sequence")
            self._prefix = [item["SpecialToken"]["id"] for item in single[:-1]]
        self._encode_word = lru_cache(maxsize=65_536)(self._bpe)

    @classmethod
    def from_file(cls, path: str | Path) -> ByteLevelBpeTokenizer:
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Merge the characters of one pre-tokenized word, lowest rank first, until no merge applies."""
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self._ranks.get(pair, -1), i) for i, pair in enumerate(itertools.pairwise(parts))]
            candidates = [(rank, i) for rank, i in ranked if rank >= 0]
            if not candidates:
                break
            best = min(candidates)[0]
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and self._ranks.get((parts[i], parts[i + 1])) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def _pieces(self, text: str) -> list[str]:
        alphabet = _byte_alphabet()
        pieces: list[str] = []
        for word in _BYTE_LEVEL_PATTERN.findall(text):
            pieces.extend(self._encode_word("".join(alphabet[byte] for byte in word.encode("utf-8"))))
        return pieces

    def encode_with_pieces(self, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[str]]:
        pieces = list(self._prefix) if add_special_tokens else []
        start = 0
        if self._added_pattern is not None:
            for match in self._added_pattern.finditer(text):
                pieces.extend(self._pieces(text[start : match.start()]))
                pieces.append(match.group())
                start = match.end()
        pieces.extend(self._pieces(text[start:]))
        ids = [self._added[piece] if piece in self._added else self._vocab[piece] for piece in pieces]
        return ids, pieces

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return self.encode_with_pieces(text, add_special_tokens=add_special_tokens)[0]
