"""What routes depend on, as `Annotated` dependencies: the app's one pipeline, corpus writer and rebuilds."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.templating import Jinja2Templates

from qa.config import Config
from qa.pipeline import Pipeline
from qa.service.metrics import Metrics
from qa.updates import CorpusWriter, Rebuilds


def get_config(request: Request) -> Config:
    return request.app.state.config


def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def get_writer(request: Request) -> CorpusWriter:
    return request.app.state.writer


def get_rebuilds(request: Request) -> Rebuilds:
    return request.app.state.rebuilds


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_templates(request: Request) -> Jinja2Templates:
    return request.app.state.templates


ConfigDep = Annotated[Config, Depends(get_config)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
WriterDep = Annotated[CorpusWriter, Depends(get_writer)]
RebuildsDep = Annotated[Rebuilds, Depends(get_rebuilds)]
TemplatesDep = Annotated[Jinja2Templates, Depends(get_templates)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_key(request: Request, config: ConfigDep) -> None:
    """Write endpoints need `Authorization: Bearer <QA_API_KEY>`; without a key set they are off."""
    if not config.api_key:
        raise HTTPException(403, "write endpoints are disabled: set QA_API_KEY to enable them")
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.encode(), config.api_key.encode()):
        raise HTTPException(403, "wrong API key")


ApiKey = Depends(require_key)


def check_question(config: Config, question: str, top_k: int) -> None:
    """The limits a question must keep: the same for the API and the web form."""
    if not question.strip():
        raise HTTPException(422, "question: must not be empty")
    if len(question) > config.max_question_chars:
        raise HTTPException(422, f"question: longer than {config.max_question_chars} characters")
    if not 1 <= top_k <= config.max_top_k:
        raise HTTPException(422, f"top_k: must be between 1 and {config.max_top_k}")
