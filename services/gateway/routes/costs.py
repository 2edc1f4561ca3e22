"""``GET /api/costs``: what the user's jobs cost over a period, by provider, day or job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

from fastapi import APIRouter, Query

from shared.errors import ValidationFailed

from .. import views
from ..deps import CurrentUser, PoolDep
from ..schemas import CostGroup, CostReport

router = APIRouter(prefix="/api/costs", tags=["costs"])

#: The longest period one report covers.
MAX_DAYS = 366


class GroupBy(StrEnum):
    PROVIDER = "provider"
    DAY = "day"
    JOB = "job"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("", response_model=CostReport)
async def cost_report(user: CurrentUser, pool: PoolDep,
                      start: datetime | None = Query(None, alias="from", description="ISO date or time, UTC when it "
                                                                                     "names no zone; 30 days before "
                                                                                     "`to` by default."),
                      end: datetime | None = Query(None, alias="to", description="ISO date or time (exclusive); now "
                                                                                 "by default."),
                      group_by: GroupBy = Query(GroupBy.PROVIDER, description="provider, day (UTC) or job.")
                      ) -> CostReport:
    """What your jobs created in [from, to) cost, in USD: finished jobs at their final cost, running ones at their
    cost so far (``running`` counts them). Every attempt of a job counts, on whichever provider it ran last."""
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - timedelta(days=30)
    if start >= end:
        raise ValidationFailed(f"from ({start.isoformat()}) must be before to ({end.isoformat()})", field="from")
    if end - start > timedelta(days=MAX_DAYS):
        raise ValidationFailed(f"a report covers at most {MAX_DAYS} days; narrow from/to", field="from")
    rows = await views.costs(pool, user, start, end, group_by.value)
    groups = [CostGroup(**row) for row in rows]
    return CostReport(**{"from": start, "to": end}, group_by=group_by.value, currency="USD",
                      total_usd=round(sum(g.cost_usd for g in groups), 6), jobs=sum(g.jobs for g in groups),
                      groups=groups)
