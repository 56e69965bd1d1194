"""Property-based run of every operation in the OpenAPI schema (schemathesis): no 5xx, and every
response matches the schema and its documented status codes. Bounded and derandomized, so CI runs
the same examples each time."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from kronos_jobs.broker.celery_app import ensure_broker_folders
from kronos_jobs.core.settings import Settings
from kronos_jobs.db import migrate

MAX_EXAMPLES = 12

_settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="kronos-schemathesis-")), database_url=None,
                     broker_url=None, max_upload_bytes=256 * 1024,
                     trusted_hosts=["testserver", "localhost", "127.0.0.1"])  # the ASGI client's Host: testserver
migrate.upgrade(_settings)  # what the app's lifespan does; the ASGI transport does not run it
ensure_broker_folders(_settings)
app = create_app(_settings)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema(case):
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, status_code_conformance,
                                   content_type_conformance])


def teardown_module() -> None:
    app.state.parsing_pool.close()
