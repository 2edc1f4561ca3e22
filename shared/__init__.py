"""Contracts that cross a process boundary: messages, schemas, settings, errors and helpers.

Modules here import nothing heavy at package import time; the trainer imports only the
pydantic-only modules (``config``, ``jobspec``, ``dataformats``).
"""
