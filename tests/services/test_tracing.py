"""One deploy is one trace: gateway request → deploy.requested → scheduler → provision.local → provider."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.scheduler.subscribers import wire as wire_scheduler
from shared import subjects

from .conftest import gateway_client, running_service, wire_local
from .test_gateway import INSTRUCTION_ROWS, auth, config_for, upload


async def test_deploy_is_one_trace_across_nats_hops(migrated, api_key, recorder):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async with running_service("scheduler", wire_scheduler, migrated, provider), \
            running_service("provider_local", wire_local, migrated, provider), \
            gateway_client(migrated, provider) as client:
        ds = (await upload(client, api_key, INSTRUCTION_ROWS)).json()
        r = await client.post("/api/training/deploy/local", headers=auth(api_key),
                              json={"config": config_for(ds["id"])})
        job_id = r.json()["job_id"]
        await recorder.wait_for(lambda m: m[0] == subjects.workload_reported("local") and m[1]["job_id"] == job_id)
        await asyncio.sleep(0.3)

    spans = exporter.get_finished_spans()
    deploy_span = next(s for s in spans if s.name == "POST /api/training/deploy/local")
    trace_id = deploy_span.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    assert any(subjects.DEPLOY_REQUESTED in n and "process" in n for n in names), names
    assert any(subjects.provision("local") in n and "process" in n for n in names), names
    assert any(subjects.workload_reported("local") in n and "publish" in n for n in names), names
