"""Build the FastAPI app: settings, error mapping, body-size limit, routers, migrations at start-up.

    uvicorn api.main:app                 # settings from KRONOS_* variables
    create_app(Settings(data_dir=tmp))   # tests and embedding
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.concurrency import run_in_threadpool

from api.auth import KeyCache
from api.browser import add_browser_safety
from api.errors import register_error_handlers
from api.limits import MULTIPART_SLACK_BYTES, BodySizeLimit
from api.quotas import KeyRateLimiter
from api.nul_bytes import NulByteGuard
from api.parsing_pool import ParsingPool
from api.routes import backtests, console, finetune, forecasts, health, jobs, models, schedules, scores, series, workers
from api.schemas import (
    BacktestJobCreate,
    BacktestUploadCreate,
    FinetuneJobCreate,
    FinetuneParamsIn,
    ForecastJobCreate,
    ForecastUploadCreate,
    SeriesBarsCreate,
)
from kronos_jobs import __version__
from kronos_jobs.core import redaction
from kronos_jobs.core.settings import Settings, get_settings
from kronos_jobs.db import migrate

logger = logging.getLogger(__name__)


def _openapi_with_request_bodies(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the forecast bodies, which the handler reads itself (JSON or upload)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (ForecastJobCreate, ForecastUploadCreate, FinetuneJobCreate, FinetuneParamsIn, SeriesBarsCreate,
                      BacktestJobCreate, BacktestUploadCreate):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
    return app.openapi_schema


def log_auth_mode(settings: Settings) -> None:
    """Say at start-up whether requests need API keys, and why."""
    if settings.auth_required:
        logger.info("API keys required (KRONOS_AUTH=%s); create one with `kronos-jobs keys create`", settings.auth)
    else:
        logger.warning("API keys NOT required (KRONOS_AUTH=%s): bound to loopback %s%s; anyone on this machine can "
                       "use the API. Set KRONOS_AUTH=on to require keys.", settings.auth, settings.api_host,
                       ", embedded default" if settings.auth == "auto" else "")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for `settings` (default: the process settings from KRONOS_* variables)."""
    settings = settings or get_settings()
    redaction.install(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Safe when several API and worker processes start at once (migrate takes a lock).
        await run_in_threadpool(migrate.upgrade, settings)
        log_auth_mode(settings)
        # The embedded broker's folders exist before the first /readyz, worker or not (celery is
        # imported here, not at module import: the app module itself stays light).
        from kronos_jobs.broker.celery_app import ensure_broker_folders

        await run_in_threadpool(ensure_broker_folders, settings)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.parsing_pool.close)

    app = FastAPI(
        title="kronos-jobs",
        version=__version__,
        description="Background forecast and fine-tune jobs for the Kronos model. Errors use one envelope: "
        '`{"error": {"code", "message", "details": [{"field", "message"}]}}`.',
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.rate_limiter = KeyRateLimiter.from_settings(settings) if settings.auth_required else None
    app.state.key_cache = KeyCache(settings.auth_cache_seconds)
    app.state.parsing_pool = ParsingPool(settings)
    register_error_handlers(app)
    app.add_middleware(NulByteGuard)  # inside the size limit: it buffers at most a capped JSON body
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + MULTIPART_SLACK_BYTES)
    add_browser_safety(app, settings)  # added last: runs first
    for module in (jobs, finetune, series, schedules, forecasts, workers, models, health, backtests, scores, console):
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=console.STATIC_DIR), name="console-static")
    # HTTP request metrics per app, in their own registry: /metrics serves them after the database's.
    app.state.http_metrics = CollectorRegistry(auto_describe=True)
    Instrumentator(registry=app.state.http_metrics, excluded_handlers=["/metrics"]).instrument(
        app, latency_lowr_buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30))
    for route in app.routes:
        # A handler's one-line docstring is its OpenAPI summary (the name alone says less).
        doc = (getattr(getattr(route, "endpoint", None), "__doc__", None) or "").strip()
        if doc and hasattr(route, "summary") and route.summary is None:
            route.summary = doc.splitlines()[0]
    app.openapi = lambda: _openapi_with_request_bodies(app)  # type: ignore[method-assign]
    return app


app = create_app()
