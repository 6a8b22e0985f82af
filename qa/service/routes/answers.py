"""Answers: a question in, extractive answers and the passages they came from out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from qa.models import AskResult, Filters
from qa.service.deps import ConfigDep, MetricsDep, PipelineDep, check_question
from qa.service.schemas import IBM_EXAMPLE, AskRequest

router = APIRouter(prefix="/api", tags=["answers"])

AS_OF = Filters.model_fields["as_of"].description


@router.post("/ask", response_model=AskResult, summary="Answer a question")
def ask(
    request: Annotated[AskRequest, Body(openapi_examples={"ibm": {"value": IBM_EXAMPLE}})],
    config: ConfigDep,
    pipeline: PipelineDep,
    metrics: MetricsDep,
) -> AskResult:
    check_question(config, request.question, request.top_k)
    result = pipeline.ask(request.question, request.top_k, request.filters)
    metrics.answered(result.no_answer)
    return result


@router.get("/ask", response_model=AskResult, summary="Answer a question (query string)")
def ask_get(
    q: Annotated[str, Query(description="The question", examples=["Why did IBM partner with Inspur?"])],
    config: ConfigDep,
    pipeline: PipelineDep,
    metrics: MetricsDep,
    top_k: int = 5,
    document_id: str | None = None,
    source: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    as_of: Annotated[str | None, Query(description=AS_OF, examples=["2022-02-05"])] = None,
) -> AskResult:
    check_question(config, q, top_k)
    try:
        filters = Filters(document_id=document_id, source=source, date_from=date_from, date_to=date_to, as_of=as_of)
    except ValidationError as exc:  # a bad date is the caller's to fix: 422, as for the POST body
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from exc
    result = pipeline.ask(q, top_k, filters)
    metrics.answered(result.no_answer)
    return result
