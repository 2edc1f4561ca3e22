"""Map the TrainingConfig onto TRL: one config and one trainer class per ``training.method``.

* sft: ``SFTTrainer`` on prompt/completion (loss on the completion). With ``training.padding_free`` (the default)
  each batch's sequences are concatenated into one row without padding (TRL's padding-free collator) and truncated
  to ``model.max_seq_length``; the model then needs an attention that respects the sequence boundaries
  (``trainer.attention``).
* dpo: ``DPOTrainer`` on prompt/chosen/rejected; with LoRA the reference model is the base without the adapter.
* orpo: ``trl.experimental.orpo.ORPOTrainer`` on prompt/chosen/rejected (no reference model).
* rlhf: ``GRPOTrainer`` (``training.rlhf.algorithm='grpo'``) or ``RLOOTrainer`` ('rloo') on prompts, rewarded by
  ``trainer.rewards``. ``training.batch_size`` counts completions: each step trains on
  ``batch_size / num_generations`` prompts per device.

``training.beta`` is DPO's and ORPO's beta; the RL trainers keep TRL's defaults for their KL terms.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from shared.config import Method
from shared.jobspec import JobSpec
from trainer import artifacts


def uses_padding_free(spec: JobSpec) -> bool:
    t = spec.config.training
    return t.method is Method.SFT and t.padding_free


def training_arguments(spec: JobSpec, *, has_eval: bool, cuda: bool, printer: Callable[[str], None] = print) -> dict:
    """The TrainingArguments every method shares."""
    t = spec.config.training
    optim = t.optimizer
    if optim.startswith("paged_") and not cuda:
        printer(f"[trainer] training.optimizer={optim!r} pages optimizer state to the GPU; using 'adamw_torch' on "
                "the CPU")
        optim = "adamw_torch"
    kwargs: dict = {}
    if has_eval and t.eval_steps:
        kwargs.update(eval_strategy="steps", eval_steps=t.eval_steps)
    else:
        kwargs["eval_strategy"] = "epoch" if has_eval else "no"
    if t.save_steps:
        kwargs.update(save_strategy="steps", save_steps=t.save_steps)
    else:
        kwargs["save_strategy"] = "epoch"
    return dict(
        output_dir=os.path.join(spec.output_dir, artifacts.CHECKPOINTS_DIR),
        run_name=spec.job_id,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        weight_decay=t.weight_decay,
        optim=optim,
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,
        bf16=t.bf16,
        fp16=t.fp16,
        seed=t.seed,
        data_seed=t.seed,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        # With keep_best_checkpoints, trainer.callbacks.RetentionCallback chooses what stays instead.
        save_total_limit=None if t.keep_best_checkpoints else 2,
        report_to="none",
        use_cpu=not cuda,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **kwargs,
    )


def build_sft_config(spec: JobSpec, *, has_eval: bool, cuda: bool, printer: Callable[[str], None] = print):
    from trl import SFTConfig

    padding_free = uses_padding_free(spec)
    return SFTConfig(
        **training_arguments(spec, has_eval=has_eval, cuda=cuda, printer=printer),
        max_length=None if padding_free else spec.config.model.max_seq_length,
        padding_free=padding_free,
        include_num_input_tokens_seen="non_padding",
    )


def build_args(spec: JobSpec, *, has_eval: bool, cuda: bool, printer: Callable[[str], None] = print):
    """The TRL config for ``training.method``."""
    t = spec.config.training
    if t.method is Method.SFT:
        return build_sft_config(spec, has_eval=has_eval, cuda=cuda, printer=printer)
    common = training_arguments(spec, has_eval=has_eval, cuda=cuda, printer=printer)
    max_length = spec.config.model.max_seq_length
    if t.method is Method.DPO:
        from trl import DPOConfig

        return DPOConfig(**common, beta=t.beta, max_length=max_length)
    if t.method is Method.ORPO:
        ORPOConfig, _ = _orpo()
        return ORPOConfig(**common, beta=t.beta, max_length=max_length, remove_unused_columns=False)
    r = t.rlhf
    if r.algorithm == "rloo":
        from trl import RLOOConfig as RLConfig
    else:
        from trl import GRPOConfig as RLConfig
    common["per_device_eval_batch_size"] = r.num_generations
    return RLConfig(**common, num_generations=r.num_generations, max_completion_length=r.max_completion_length)


def _orpo():
    """ORPO's config and trainer; TRL keeps ORPO in ``trl.experimental`` (its warning about that is silenced)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def _truncating_sft_trainer(max_length: int):
    """SFTTrainer that truncates to ``max_length`` in padding-free mode (TRL only truncates there when packing)."""
    from trl import SFTTrainer

    class TruncatingSFTTrainer(SFTTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, *rest, **kwargs):
            saved, args.max_length = args.max_length, max_length
            try:
                return super()._prepare_dataset(dataset, processing_class, args, *rest, **kwargs)
            finally:
                args.max_length = saved

    return TruncatingSFTTrainer


def build_trainer(spec: JobSpec, *, model, tokenizer, data, peft_config, callbacks: list, cuda: bool,
                  printer: Callable[[str], None] = print):
    """The TRL trainer for ``training.method`` over ``data`` (a ``trainer.data.PreparedData``)."""
    t = spec.config.training
    args = build_args(spec, has_eval=data.eval is not None, cuda=cuda, printer=printer)
    common = dict(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if t.method is Method.SFT:
        if uses_padding_free(spec):
            return _truncating_sft_trainer(spec.config.model.max_seq_length)(**common)
        from trl import SFTTrainer

        return SFTTrainer(**common)
    if t.method is Method.DPO:
        from trl import DPOTrainer

        return DPOTrainer(**common)
    if t.method is Method.ORPO:
        _, ORPOTrainer = _orpo()
        return ORPOTrainer(**common)
    from trainer.rewards import reward_sources

    if t.rlhf.algorithm == "rloo":
        from trl import RLOOTrainer as RLTrainer
    else:
        from trl import GRPOTrainer as RLTrainer
    reward_funcs, reward_classes = reward_sources(spec.config, public_only=spec.public_addresses_only)
    return RLTrainer(**common, reward_funcs=reward_funcs, reward_processing_classes=reward_classes)
