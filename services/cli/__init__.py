"""The ``tunefleet`` command: the embedded stack, API keys, the tiny model and the demo."""
