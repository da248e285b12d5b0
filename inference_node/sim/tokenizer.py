"""The simulator's tokenizers (a deterministic word-level one, or a model's BPE) and its chat template."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

from inference_node.sim.bpe import ByteLevelBpeTokenizer
from inference_node.sim.errors import InvalidRequestError
from inference_node.sim.protocol import ChatMessageParam

VOCAB_SIZE = 32_000
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"

_TOKEN_PATTERN = re.compile(r"<\|[a-z_]+\|>|</?s>|\w+|[^\w\s]")
_SPECIAL_TOKEN_IDS = {
    "<unk>": 0,
    BOS_TOKEN: 1,
    EOS_TOKEN: 2,
    "<|system|>": 3,
    "<|user|>": 4,
    "<|assistant|>": 5,
    "<|tool|>": 6,
    "<|developer|>": 7,
    "<|end|>": 8,
}
_FIRST_HASHED_ID = 1000
EOS_TOKEN_ID = _SPECIAL_TOKEN_IDS[EOS_TOKEN]  # the same in the BPE of the test tier's model (scripts/vllm)

# fmt: off
VOCABULARY = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "at", "this",
    "from", "are", "or", "an", "which", "have", "not", "one", "all", "were", "when", "there", "can", "more", "time",
    "will", "some", "what", "about", "into", "than", "them", "only", "other", "new", "also", "these", "two", "may",
    "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "man", "me", "even", "most", "made",
    "after", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down",
    "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make",
    "world", "still", "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being",
    "under", "never", "day", "same", "another", "know", "while", "last", "might", "us", "great", "old", "year",
    "off", "come", "since", "against", "go", "came", "right", "used", "take", "three", "small", "large", "next",
    "early", "young", "important", "few", "public", "bad", "able", "model", "token", "compute", "ledger", "node",
    "signal", "river", "market", "engine", "value", "stream", "batch", "cloud", "edge", "region", "settle",
    "budget", "answer", "reason", "number", "system", "network", "energy", "light", "water", "stone", "garden",
    "letter", "window", "morning", "evening", "history", "science", "music", "paper", "story",
)
# fmt: on
_VOCABULARY_IDS = {word: 100 + index for index, word in enumerate(VOCABULARY)}


class Tokenizer(Protocol):
    """What the simulator counts prompts with: token ids, and the token strings /tokenize returns."""

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def encode_with_pieces(self, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[str]]: ...


class WordTokenizer:
    """A deterministic tokenizer: every word, punctuation mark or special tag is one token.

    Whitespace is not a token, so ``pieces(text)`` of a generated completion counts exactly its
    text tokens. ``<s>`` (BOS) and ``</s>`` (EOS) are special tokens, as in Llama tokenizers.
    """

    def pieces(self, text: str) -> list[str]:
        return _TOKEN_PATTERN.findall(text)

    def token_id(self, piece: str) -> int:
        known = _SPECIAL_TOKEN_IDS.get(piece)
        if known is None:
            known = _VOCABULARY_IDS.get(piece)
        if known is not None:
            return known
        digest = hashlib.blake2b(piece.encode(), digest_size=8).digest()
        return _FIRST_HASHED_ID + int.from_bytes(digest, "big") % (VOCAB_SIZE - _FIRST_HASHED_ID)

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        ids = [self.token_id(piece) for piece in self.pieces(text)]
        return [_SPECIAL_TOKEN_IDS[BOS_TOKEN], *ids] if add_special_tokens else ids

    def encode_with_pieces(self, text: str, *, add_special_tokens: bool) -> tuple[list[int], list[str]]:
        pieces = self.pieces(text)
        if add_special_tokens:
            pieces = [BOS_TOKEN, *pieces]
        return [self.token_id(piece) for piece in pieces], pieces


def message_text(message: ChatMessageParam) -> str:
    """The text of a chat message; text parts are joined with newlines as vLLM's parser does."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise InvalidRequestError(f"The simulated model is text-only and cannot take a `{part.type}` content part.")
        texts.append(part.text)
    return "\n".join(texts)


def render_chat_prompt(
    messages: Sequence[ChatMessageParam], *, add_generation_prompt: bool, continue_final_message: bool
) -> str:
    """Render messages through the simulator's chat template (BOS, role tags, end tags)."""
    parts = [BOS_TOKEN]
    for position, message in enumerate(messages):
        open_ended = continue_final_message and position == len(messages) - 1
        parts.append(f"<|{message.role}|>\n{message_text(message)}")
        if not open_ended:
            parts.append("<|end|>\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def load_tokenizer(path: str | None) -> Tokenizer:
    """The model's BPE from its tokenizer.json, or the built-in word tokenizer when there is none."""
    if path is None:
        return WordTokenizer()
    return ByteLevelBpeTokenizer.from_file(path)
