"""The model registry: turns each completed job into a registered model."""
