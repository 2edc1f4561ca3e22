"""Padding-free SFT: per-sequence attention equals padded attention, and long rows are still truncated."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from trainer.attention import VARLEN_ATTENTION, padding_free_attention, register_varlen_attention
from trainer.data import prepare_data
from trainer.methods import build_trainer


def test_varlen_attention_matches_padded_attention(tiny_model_dir):
    lengths = (5, 17, 9)
    torch.manual_seed(0)
    examples = [{"input_ids": torch.randint(4, 500, (n,)).tolist()} for n in lengths]
    flat = DataCollatorForLanguageModeling(pad_token_id=3, padding_free=True)(examples)
    padded = DataCollatorForLanguageModeling(pad_token_id=3)(examples)
    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_varlen_attention())
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    with torch.no_grad():
        flat_logits = varlen(**{k: v for k, v in flat.items() if k != "labels"}).logits[0]
        padded_logits = sdpa(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        torch.testing.assert_close(varlen(**flat).loss, sdpa(**padded).loss, rtol=1e-5, atol=1e-5)
    expected = torch.cat([padded_logits[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(flat_logits, expected, rtol=1e-4, atol=1e-4)
    prompt = torch.tensor([[1, 20, 30]])
    assert torch.equal(varlen.generate(prompt, max_new_tokens=4, do_sample=False),
                       sdpa.generate(prompt, max_new_tokens=4, do_sample=False))


def test_padding_free_picks_flash_attention_only_where_it_can_run():
    assert padding_free_attention(cuda=False, half_precision=True) == VARLEN_ATTENTION
    assert padding_free_attention(cuda=True, half_precision=False) == VARLEN_ATTENTION


def test_padding_free_sft_truncates_to_max_seq_length(make_spec, tiny_model_dir):
    spec = make_spec(fmt="text", rows=8, model={"max_seq_length": 16}, data={"eval_split": 0.25},
                     training={"max_steps": 1})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=register_varlen_attention())
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, data=prepare_data(spec, tokenizer),
                            peft_config=None, callbacks=[], cuda=False)
    rows = [*trainer.train_dataset["input_ids"], *trainer.eval_dataset["input_ids"]]
    lengths = [len(ids) for ids in rows]
    assert max(lengths) == 16 and len(lengths) == 8
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 16 * spec.config.training.batch_size)
    assert trainer.args.max_length is None and trainer.args.padding_free
