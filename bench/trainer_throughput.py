"""Training throughput: TuneFleet's SFT against a plain padded SFTTrainer, same tiny model, same samples.

    .venv/bin/python bench/trainer_throughput.py [--samples 192] [--batch-size 8] [--repeats 3] [--device cpu]

Both sides train the tiny Llama of ``trainer.tiny_model`` with the same LoRA adapter for one epoch over the same
rendered instruction rows, whose lengths vary widely (log-uniform, about 16 to 400 tokens):

* baseline: ``trl.SFTTrainer`` with its defaults (padded batches, SDPA attention) except what both sides share and
  what is no part of padding: batch size, learning rate, max length, float32, no gradient checkpointing, no saving.
* tunefleet: the model, TRL config and trainer that ``trainer.train.run`` builds (``trainer.modeling.load_model``,
  ``trainer.methods.build_trainer``): padding-free batches with the per-sequence attention of
  ``trainer.attention``.

Each run is its own process (so that its peak RSS is its own); the sides alternate ``--repeats`` times. Each
side's throughput is its best run (other load on a shared machine only ever slows a run down) and its peak memory
the median of its runs. Tokens per second = real (non-pad) tokens of the epoch / wall seconds from the start of
training to the end of the last optimizer step. Peak memory is the process's peak RSS on the CPU and
``torch.cuda.max_memory_allocated`` on a GPU. The last line is ``tokens_per_s_ratio=X peak_mem_ratio=Y``
(tunefleet over baseline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MAX_SEQ_LENGTH = 512
LEARNING_RATE = 1e-3


def write_dataset(path: str, tokenizer, *, samples: int, min_len: int, max_len: int, seed: int = 0) -> list[int]:
    """Instruction rows whose outputs are about L tokens long, L log-uniform in [min_len, max_len]."""
    from trainer.tiny_model import CAPITALS, WORDS

    rng = random.Random(seed)
    words = [*WORDS, *CAPITALS, *CAPITALS.values(), "the", "capital", "of", "is", "model", "learns", "weather"]
    per_word = len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) / len(words)
    lengths = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(samples):
            target = math.exp(rng.uniform(math.log(min_len), math.log(max_len)))
            output = " ".join(rng.choice(words) for _ in range(max(1, round(target / per_word))))
            row = {"instruction": f"Continue the list {rng.randrange(100)}.", "output": output}
            lengths.append(len(tokenizer(output, add_special_tokens=False).input_ids))
            f.write(json.dumps(row) + "\n")
    return lengths


def _spec(model_dir: str, data_path: str, out_dir: str, batch_size: int):
    from shared.jobspec import JobSpec

    return JobSpec.model_validate({
        "job_id": "bench",
        "config": {
            "model": {"base_model": model_dir, "max_seq_length": MAX_SEQ_LENGTH},
            "data": {"train_path": data_path, "eval_split": 0.0},
            "training": {"epochs": 1, "batch_size": batch_size, "learning_rate": LEARNING_RATE,
                         "save_steps": 10**6, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "predictions": {"enabled": False},
        },
        "dataset_path": data_path,
        "dataset_format": "instruction",
        "output_dir": out_dir,
    })


def _timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        started = ended = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ended = time.perf_counter()

    return Timer()


def run_side(side: str, work: str, batch_size: int, device: str) -> dict:
    """Train one side for one epoch in this process; return its measurements."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from trainer.attention import padding_free_attention
    from trainer.data import prepare_data
    from trainer.methods import build_trainer
    from trainer.modeling import build_lora_config, load_model, load_tokenizer

    torch.manual_seed(0)
    cuda = device == "cuda"
    spec = _spec(os.path.join(work, "model"), os.path.join(work, "data.jsonl"), os.path.join(work, f"out-{side}"),
                 batch_size)
    tokenizer = load_tokenizer(spec.config)
    data = prepare_data(spec, tokenizer)
    timer = _timer()
    if side == "tunefleet":
        model = load_model(spec.config, attn_implementation=padding_free_attention(cuda=cuda, half_precision=False))
        trainer = build_trainer(spec, model=model, tokenizer=tokenizer, data=data, cuda=cuda, callbacks=[timer],
                                peft_config=build_lora_config(spec.config.training.lora, model),
                                printer=lambda _line: None)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec.config.model.base_model, dtype=torch.float32)
        args = SFTConfig(output_dir=os.path.join(work, "out-baseline"), num_train_epochs=1,
                         per_device_train_batch_size=batch_size, learning_rate=LEARNING_RATE,
                         max_length=MAX_SEQ_LENGTH, activation_checkpointing=False, bf16=False, fp16=False,
                         use_cpu=not cuda, save_strategy="no", report_to="none", disable_tqdm=True,
                         logging_steps=10**6, dataloader_num_workers=0, seed=42)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                          task_type="CAUSAL_LM")
        trainer = SFTTrainer(model=model, args=args, train_dataset=data.train, processing_class=tokenizer,
                             peft_config=lora, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = timer.ended - timer.started
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"side": side, "tokens": tokens, "steps": trainer.state.global_step, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1), "peak_mem_mb": round(peak, 1),
            "rss_before_train_mb": round(rss_before, 1)}


def _child(side: str, work: str, batch_size: int, device: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--work-dir", work,
               "--batch-size", str(batch_size), "--device", device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=400)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--side", choices=["baseline", "tunefleet"], help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.side:
        print(json.dumps(run_side(args.side, args.work_dir, args.batch_size, args.device)), flush=True)
        return 0
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from transformers.utils import logging as hf_logging

    from trainer.tiny_model import build_tiny_model, build_tokenizer

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="tunefleet-bench-") as work:
        build_tiny_model(os.path.join(work, "model"))
        lengths = write_dataset(os.path.join(work, "data.jsonl"), build_tokenizer(), samples=args.samples,
                                min_len=args.min_len, max_len=args.max_len)
        print(f"data: {args.samples} rows, output tokens min={min(lengths)} median={statistics.median(lengths):.0f} "
              f"max={max(lengths)}; batch size {args.batch_size}; device {device}")
        runs: dict[str, list[dict]] = {"baseline": [], "tunefleet": []}
        for _ in range(args.repeats):
            for side in runs:
                result = _child(side, work, args.batch_size, device)
                runs[side].append(result)
                print(f"  {side:9s} {result['tokens']} tokens in {result['seconds']:.2f}s: "
                      f"{result['tokens_per_s']:.0f} tokens/s, peak {result['peak_mem_mb']:.0f} MiB", flush=True)
    if {r["tokens"] for side in runs.values() for r in side} != {runs["baseline"][0]["tokens"]}:
        raise SystemExit("the two sides did not train on the same tokens")
    summary = {side: {"tokens_per_s": max(r["tokens_per_s"] for r in results),
                      "peak_mem_mb": statistics.median(r["peak_mem_mb"] for r in results)}
               for side, results in runs.items()}
    for side, m in summary.items():
        print(f"{side}: {m['tokens_per_s']:.0f} tokens/s (best run), peak memory {m['peak_mem_mb']:.0f} MiB (median)")
    speed = summary["tunefleet"]["tokens_per_s"] / summary["baseline"]["tokens_per_s"]
    memory = summary["tunefleet"]["peak_mem_mb"] / summary["baseline"]["peak_mem_mb"]
    print(f"tokens_per_s_ratio={speed:.2f} peak_mem_ratio={memory:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
