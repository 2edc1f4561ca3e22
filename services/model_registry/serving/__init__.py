"""Serving registered models on vLLM, Ollama or the built-in server."""
