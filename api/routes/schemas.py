"""The JSON Schemas of what the service returns beside its OpenAPI document: a run's typed Report."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.errors import READ_STATUSES, error_responses
from soce.schemas.report import Report

router = APIRouter(prefix="/v1/schemas", tags=["schemas"])


@router.get("/report", responses=error_responses(*READ_STATUSES))
def report_schema() -> dict[str, Any]:
    """The JSON Schema of a run's Report: report.json, and `report` in a job's detail."""
    return Report.model_json_schema()
