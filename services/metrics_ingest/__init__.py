"""Metrics ingest: takes the trainer's batches over HTTP, stores each point once with COPY, acknowledges
what is committed, and fans stored points out live over NATS."""
