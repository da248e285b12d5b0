"""Build the tiny Llama that a CPU vLLM serves in tests: random weights, a small BPE tokenizer, a chat template.

Run with the vLLM virtualenv's python (its torch, transformers and tokenizers), offline::

    HF_HUB_OFFLINE=1 $SLUICE_VLLM_HOME/venv/bin/python scripts/vllm/build_tiny_model.py --out DIR

Everything is fixed (corpus, seeds, sizes), so two builds with the same library versions give the same
files byte for byte. The model's shape is the smallest vLLM's CPU backend runs: 2 layers, hidden size
128, 4 heads of 32 (the CPU attention kernels need head_dim >= 32). The output head is untied and its
rows for the special tokens are zero, so greedy decoding never emits them: every completion runs to
``max_tokens`` (finish_reason "length") unless a request asks for a stop (``logit_bias`` on ``</s>``).
The special tokens and the chat template are the simulator's (``inference_node``), so the same messages
render to the same token layout on both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from pathlib import Path

MODEL_NAME = "sluice-tiny-llama"
SEED = 20_251_101
VOCAB_SIZE = 2048
MAX_POSITION_EMBEDDINGS = 2048
# The simulator's special tokens, in the simulator's id order (<unk>=0, <s>=1, </s>=2, roles, <|end|>).
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|developer|>",
                  "<|end|>"]  # fmt: skip
BOS, EOS = "<s>", "</s>"
# The simulator's template: BOS, then "<|role|>\ncontent<|end|>\n" per message, then "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)

# fmt: off
_WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by", "at", "this",
    "from", "are", "or", "an", "which", "have", "not", "one", "all", "were", "when", "there", "can", "more", "time",
    "will", "some", "what", "about", "into", "than", "them", "only", "other", "new", "also", "these", "two", "may",
    "first", "then", "do", "any", "like", "my", "now", "over", "such", "our", "even", "most", "made", "after",
    "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should",
    "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world",
    "still", "own", "see", "work", "long", "get", "here", "between", "both", "life", "being", "under", "never",
    "day", "same", "another", "know", "while", "last", "might", "great", "old", "year", "off", "come", "since",
    "against", "go", "came", "right", "used", "take", "three", "small", "large", "next", "early", "young",
    "important", "few", "public", "able", "model", "token", "compute", "ledger", "node", "signal", "river",
    "market", "engine", "value", "stream", "batch", "cloud", "edge", "region", "settle", "budget", "answer",
    "reason", "number", "system", "network", "energy", "light", "water", "stone", "garden", "letter", "window",
    "morning", "evening", "history", "science", "music", "paper", "story", "hello", "please", "write", "say",
    "tell", "count", "list", "explain", "question", "user", "assistant", "prompt", "request", "receipt", "ticket",
)
# fmt: on


def corpus(seed: int) -> list[str]:
    """A fixed training corpus: sentences drawn from a word list, plus digits and punctuation."""
    rng = random.Random(seed)
    lines = []
    for _ in range(4000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 9999)))
        end = rng.choice([".", ".", ".", "?", "!", ":", ";"])
        comma = rng.randrange(1, len(words)) if rng.random() < 0.3 else None
        text = " ".join(word + ("," if position == comma else "") for position, word in enumerate(words))
        lines.append(text + end)
    return lines


def build_tokenizer(out: Path) -> object:
    """Train a byte-level BPE (every string encodes; no unknown tokens) and save it as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(SEED), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    # A completions prompt starts with BOS when add_special_tokens is true, as Llama tokenizers do.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_model(out: Path, vocab_size: int, special_ids: list[int], bos_id: int, eos_ids: list[int]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0],
        dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        model.lm_head.weight[special_ids] = 0.0
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids)
    model.save_pretrained(str(out), safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced if it exists)")
    args = parser.parse_args()
    out: Path = args.out

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = build_tokenizer(staging)
    vocab_size = len(tokenizer)  # type: ignore[arg-type]
    special_ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]  # type: ignore[attr-defined]
    bos_id = tokenizer.convert_tokens_to_ids(BOS)  # type: ignore[attr-defined]
    eos_ids = [tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids("<|end|>")]  # type: ignore[attr-defined]
    build_model(staging, vocab_size, special_ids, bos_id, eos_ids)
    about = {"served_model_name": MODEL_NAME, "seed": SEED,
             "special_token_ids": dict(zip(SPECIAL_TOKENS, special_ids, strict=True))}  # fmt: skip
    (staging / "sluice-model.json").write_text(json.dumps(about, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)

    total = 0
    for path in sorted(out.iterdir()):
        data = path.read_bytes()
        total += len(data)
        print(f"    {path.name:28} {len(data):>9} B  sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    print(f"    {MODEL_NAME}: vocab {vocab_size}, {total} bytes in {out}")


if __name__ == "__main__":
    main()
