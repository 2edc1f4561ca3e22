"""Metrics ingest: takes the trainer's batches over HTTP, stores them once, and fans them out live."""
