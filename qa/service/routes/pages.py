"""The web form: ask on `/`, add an article on `/add`. Server-rendered, so it works without JavaScript."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from qa.index import IndexProblem, NoIndex
from qa.ingest import ingest_status
from qa.models import Filters
from qa.pipeline import Pipeline
from qa.service.deps import ConfigDep, MetricsDep, PipelineDep, TemplatesDep, check_question

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request,
    config: ConfigDep,
    pipeline: PipelineDep,
    templates: TemplatesDep,
    metrics: MetricsDep,
    q: str = "",
    top_k: int = 5,
    as_of: str = "",
) -> HTMLResponse:
    result, error = None, None
    if q:
        try:
            check_question(config, q, top_k)
            filters = Filters(as_of=as_of or None)
            result = pipeline.ask(q, top_k, None if filters.empty() else filters)
            metrics.answered(result.no_answer)
        except HTTPException as exc:
            error = exc.detail
        except ValidationError as exc:
            error = "As of: " + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        except IndexProblem as exc:
            error = "No index yet: run `qa index`." if isinstance(exc, NoIndex) else str(exc)
    context = {
        "q": q,
        "as_of": as_of,
        "result": result,
        "error": error,
        "examples": _examples(pipeline),
        "threshold": config.answer_threshold,
        "ingest": ingest_status(config),
    }
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/add", response_class=HTMLResponse)
def add_page(request: Request, config: ConfigDep, templates: TemplatesDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "add.html", {"max_bytes": config.max_body_bytes})


@router.get("/favicon.ico")
def favicon() -> RedirectResponse:
    return RedirectResponse("/static/favicon.svg", status_code=301)


def _examples(pipeline: Pipeline) -> list[str]:
    """Questions drawn from the corpus: what each of a few articles reports."""
    try:
        titles = pipeline.index().store.sample_titles(3)
    except IndexProblem:
        return []
    return [f"What happened: {t.rstrip('.?!')}?" for t in titles]
