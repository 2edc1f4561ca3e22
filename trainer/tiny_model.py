"""A tiny random Llama-style model, a locally trained tokenizer and small learnable data sets.

For tests and smoke runs: nothing is downloaded. ``build_tiny_model`` writes a folder that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load like any hub model.
"""

from __future__ import annotations

import json
import os
import random

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

#: Renders ``<|role|>\ncontent\n`` per message, closes assistant turns with the eos token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Cuba": "Havana",
    "Chile": "Santiago",
    "Greece": "Athens",
}

WORDS = ["cat", "dog", "sun", "tree", "book", "lamp", "river", "stone", "bird", "cloud", "apple", "house"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A model learns from examples, one step at a time.",
    "### Instruction:\n### Input:\n### Response:\n### User:\n### Assistant:\n### System:\n",
    "<|system|>\n<|user|>\n<|assistant|>\nYou are a helpful assistant.",
    "Reverse the word: Repeat the word: What is the capital of",
    "Please answer the question with a single word. Thank you!",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20.",
    "The weather today is sunny, with a light breeze from the west.",
    "Training loss falls while evaluation loss tells whether it generalises.",
]


def _corpus() -> list[str]:
    lines = list(_CORPUS)
    for country, capital in CAPITALS.items():
        lines.append(f"What is the capital of {country}? The capital of {country} is {capital}.")
    for word in WORDS:
        lines.append(f"Reverse the word: {word} -> {word[::-1]}. Repeat the word: {word} -> {word} {word}.")
    return lines * 4


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a built-in corpus, wrapped as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_tiny_model(
    out_dir: str,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    initializer_range: float = 0.1,
) -> str:
    """Write a random-initialised LlamaForCausalLM and its tokenizer into ``out_dir``; return ``out_dir``.

    ``initializer_range`` is larger than Llama's 0.02 so that the frozen random ``lm_head`` can produce logits
    large enough for a LoRA adapter on the attention projections to lower the loss visibly within ~30 steps.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def sample_rows(rows: int = 64, fmt: str = "instruction", seed: int = 0) -> list[dict]:
    """Rows of a small, repetitive task in one of the formats "text", "instruction", "chat", "preference"."""
    rng = random.Random(seed)
    countries = list(CAPITALS)
    out: list[dict] = []
    for i in range(rows):
        country = countries[rng.randrange(len(countries))]
        capital = CAPITALS[country]
        question = f"What is the capital of {country}?"
        if fmt == "instruction":
            if i % 2:
                out.append({"instruction": question, "input": "", "output": capital})
            else:
                out.append({"instruction": "Name the capital.", "input": country, "output": capital})
        elif fmt == "chat":
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": capital}]
            if i % 3 == 0:
                messages.insert(0, {"role": "system", "content": "Answer with a single word."})
            out.append({"messages": messages})
        elif fmt == "text":
            out.append({"text": f"The capital of {country} is {capital}. {capital} is in {country}."})
        elif fmt == "preference":
            wrong = CAPITALS[countries[(countries.index(country) + 1) % len(countries)]]
            out.append({"prompt": question, "chosen": capital, "rejected": wrong})
        else:
            raise ValueError(f"unknown format {fmt!r}: use text, instruction, chat or preference")
    return out


def write_sample_dataset(path: str, rows: int = 64, fmt: str = "instruction", seed: int = 0) -> str:
    """Write ``sample_rows(rows, fmt, seed)`` as JSONL to ``path``; return ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in sample_rows(rows, fmt, seed):
            f.write(json.dumps(row) + "\n")
    return path
