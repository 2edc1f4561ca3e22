"""The TuneFleet trainer: ``python -m trainer --spec FILE`` runs one JobSpec on the GPU box.

Imports only the pydantic-only ``shared`` modules (``config``, ``jobspec``, ``dataformats``); heavy libraries
(torch, transformers, peft, trl) are imported where they are used.
"""
