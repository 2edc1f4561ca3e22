"""The TuneFleet trainer: ``python -m trainer --spec FILE`` runs one JobSpec on the GPU box.

``python -m trainer.preflight`` tries a configuration for a few steps on a CPU first. Modules: ``train`` (the job),
``validate`` (refusals before any GPU time), ``data`` (rendering), ``methods`` (TRL per method), ``modeling``,
``attention`` (padding-free), ``rewards`` (RLHF), ``callbacks``/``reporter``/``scoring``/``system`` (metrics and
predictions), ``artifacts``, ``launch`` (multi-GPU), ``errors``.

Imports only the pydantic-only ``shared`` modules (``config``, ``jobspec``, ``dataformats``); heavy libraries
(torch, transformers, peft, trl) are imported where they are used.
"""
