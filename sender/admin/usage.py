"""/admin/v1/usage: aggregates and raw records, JSON or CSV, from the same report code as
`llm-dispatcher usage` (llm_dispatcher/db/usage_report.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Query, Response

from llm_dispatcher.db import usage_report
from llm_dispatcher.errors import InvalidRequestError
from sender.admin.http import JSON
from sender.admin.schemas import UsageAggregate, UsageRecords
from sender.context import SenderContext

CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV with format=csv"}}

SINCE = Query(None, description="ISO 8601, or a duration ago such as 24h, 7d (default 24h)")
UNTIL = Query(None, description="ISO 8601, a duration ago, or now (default now)")


def csv_response(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def _query_error(exc: usage_report.UsageQueryError) -> InvalidRequestError:
    return InvalidRequestError(str(exc), param=exc.param)


def add_usage_routes(router: APIRouter, get_ctx: Callable[[], SenderContext]) -> None:
    @router.get(
        "/usage",
        summary="Usage aggregated over a time range",
        response_model=UsageAggregate,
        responses=CSV,  # type: ignore[arg-type]
    )
    async def usage(
        since: str | None = SINCE,
        until: str | None = UNTIL,
        group_by: str | None = Query(
            None, description=f"Comma-separated, of {', '.join(usage_report.GROUP_KEYS)} (hour and day exclusive)"
        ),
        token: str | None = Query(None, description="Only this token's requests (by name)"),
        model: str | None = Query(None, description="Only this model's requests"),
        format: Literal["json", "csv"] = Query("json"),
    ) -> Response:
        try:
            query = usage_report.usage_query(since=since, until=until, group_by=group_by, token=token, model=model)
        except usage_report.UsageQueryError as exc:
            raise _query_error(exc) from None
        aggregate = await get_ctx().store.usage_aggregate(query)
        if format == "csv":
            return csv_response(usage_report.aggregate_csv(aggregate), "usage.csv")
        return JSON(aggregate.to_json())

    @router.get(
        "/usage/records",
        summary="Raw usage records, newest first, paginated",
        response_model=UsageRecords,
        responses=CSV,  # type: ignore[arg-type]
    )
    async def usage_records(
        since: str | None = SINCE,
        until: str | None = UNTIL,
        token: str | None = Query(None, description="Only this token's requests (by name)"),
        model: str | None = Query(None, description="Only this model's requests"),
        limit: int = Query(100, ge=1, le=1000, description="Records per page"),
        after: int | None = Query(None, description="Continue below this record id (`last_id` of a page)"),
        format: Literal["json", "csv"] = Query("json"),
    ) -> Response:
        try:
            query = usage_report.records_query(
                since=since, until=until, token=token, model=model, after=after, limit=limit
            )
        except usage_report.UsageQueryError as exc:
            raise _query_error(exc) from None
        page = await get_ctx().store.usage_records(query)
        if format == "csv":
            return csv_response(usage_report.records_csv(page), "usage-records.csv")
        return JSON(page.to_json())
