"""Every NATS subject, stream and durable consumer name, written once."""

from __future__ import annotations

PREFIX = "tunefleet"

# Commands
DEPLOY_REQUESTED = f"{PREFIX}.deploy.requested"
STOP_REQUESTED = f"{PREFIX}.stop.requested"


def provision(provider: str) -> str:
    return f"{PREFIX}.provision.{provider}"


def terminate(provider: str) -> str:
    return f"{PREFIX}.terminate.{provider}"


# Events
def workload_reported(provider: str) -> str:
    return f"{PREFIX}.workload.{provider}.reported"


WORKLOAD_REPORTED_ANY = f"{PREFIX}.workload.*.reported"


def workload_logged(provider: str) -> str:
    """New lines of a workload's log, numbered, as its provider read them (stored: every line is kept)."""
    return f"{PREFIX}.workload.{provider}.logged"


WORKLOAD_LOGGED_ANY = f"{PREFIX}.workload.*.logged"


def job_status(job_id: str) -> str:
    return f"{PREFIX}.job.{job_id}.status"


JOB_STATUS_ANY = f"{PREFIX}.job.*.status"


def job_metrics(job_id: str) -> str:
    return f"{PREFIX}.job.{job_id}.metrics"


def job_predictions(job_id: str) -> str:
    return f"{PREFIX}.job.{job_id}.predictions"


def job_budget_alert(job_id: str) -> str:
    """A job's cost crossed its ``alert_threshold`` (once), or reached its budget without stopping."""
    return f"{PREFIX}.job.{job_id}.budget_alert"


JOB_BUDGET_ALERT_ANY = f"{PREFIX}.job.*.budget_alert"


def job_cost(job_id: str) -> str:
    """A running job's cost: per hour, so far, projected, budget remaining (plain NATS, like metrics)."""
    return f"{PREFIX}.job.{job_id}.cost"


JOB_COST_ANY = f"{PREFIX}.job.*.cost"


def job_log(job_id: str) -> str:
    """Lines of a job's log as the scheduler stored them, batched (plain NATS, like metrics)."""
    return f"{PREFIX}.job.{job_id}.log"


def job_all(job_id: str) -> str:
    return f"{PREFIX}.job.{job_id}.>"


MODEL_REGISTERED = f"{PREFIX}.model.registered"

#: Commands to the model registry's serving: start serving a model, stop a serving.
SERVE_REQUESTED = f"{PREFIX}.serve.requested"
SERVE_STOP = f"{PREFIX}.serve.stop"


def serving_status(serving_id: str) -> str:
    """A serving became ready, failed or stopped (the model registry)."""
    return f"{PREFIX}.serving.{serving_id}.status"


SERVING_STATUS_ANY = f"{PREFIX}.serving.*.status"


def catalogue(provider: str) -> str:
    """Core NATS request/reply: ``{"user_id"}`` → the provider's offers for that user's account (``Catalogue``)."""
    return f"{PREFIX}.catalogue.{provider}"


#: Core NATS request/reply: ``HubCheckRequest`` → ``HubModelCheck``, answered where users' Hugging Face tokens can be
#: opened (the Spaces provider service).
HUB_MODEL_CHECK = f"{PREFIX}.hub.model_check"


def health(service: str) -> str:
    """Core NATS request/reply subject each service answers while it is ready."""
    return f"{PREFIX}.health.{service}"


# JetStream streams: commands are work for one service; events are facts for anyone.
COMMANDS_STREAM = "TUNEFLEET_COMMANDS"
COMMANDS_SUBJECTS = [f"{PREFIX}.deploy.>", f"{PREFIX}.stop.>", f"{PREFIX}.provision.>", f"{PREFIX}.terminate.>",
                     f"{PREFIX}.serve.>"]
EVENTS_STREAM = "TUNEFLEET_EVENTS"
#: Job status changes are stored; live metrics and predictions are not (PostgreSQL holds them durably, and
#: a stream would write every point to disk a second time): they are plain NATS messages on
#: ``tunefleet.job.<id>.metrics`` / ``.predictions`` for whoever listens.
EVENTS_SUBJECTS = [f"{PREFIX}.job.*.status", f"{PREFIX}.job.*.budget_alert", f"{PREFIX}.workload.>",
                   f"{PREFIX}.model.>", f"{PREFIX}.serving.>"]

#: Messages no subscriber could handle (``shared.dead_letters``), on ``tunefleet.dead.<consumer>``.
DEAD_LETTERS_STREAM = "TUNEFLEET_DEAD_LETTERS"
DEAD_LETTERS_PREFIX = f"{PREFIX}.dead"

SERVICES = ("gateway", "scheduler", "provider_local", "provider_runpod", "provider_lambda", "provider_kaggle",
            "provider_hfspaces", "metrics_ingest", "model_registry", "notifier")
