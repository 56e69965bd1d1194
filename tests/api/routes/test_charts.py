"""GET /v1/jobs/{id}/chart, and what every result format says about the model that made it."""

from __future__ import annotations

import io
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kronos_jobs.core.names import JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.testing.factories import make_forecast_request, make_forecast_rows


def finished(client: TestClient, db: Session, *, model: str = "random:mini", meta: dict | None = None,
             quantiles=(0.1, 0.9), **request) -> str:
    """A job submitted over HTTP (its bars stored), then finished with rows as a worker would."""
    body = make_forecast_request(n_symbols=2, n_bars=30, model=model, **request)
    job_id = client.post("/v1/jobs/forecast", json=body).json()["id"]
    rows = make_forecast_rows(symbols=("SYM0.SH", "SYM1.SH"), steps=3, quantiles=quantiles)
    job_crud.claim_job(db, job_id=job_id, owner="w", lease_seconds=60)
    result_crud.write_forecasts(db, job_id=job_id, tenant_id="default", rows=rows)
    job_crud.finish_job(db, job_id=job_id, owner="w", state=JobState.SUCCEEDED, execution_metadata=meta or {})
    db.commit()
    return job_id


RANDOM_META = {"model": "random:mini", "model_source": "random", "model_path": "", "label": "random weights"}
HUB_META = {"model": "kronos-small", "model_source": "hub", "model_path": "NeoQuasar/Kronos-small",
            "model_revision": "901c26c", "model_checksum": "ab" * 32}


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("svg", b"<?xml")])
def test_chart_formats(client: TestClient, db: Session, fmt: str, magic: bytes) -> None:
    job_id = finished(client, db, meta=RANDOM_META)
    response = client.get(f"/v1/jobs/{job_id}/chart", params={"format": fmt, "symbol": "SYM1.SH"})
    assert response.status_code == 200, response.text
    assert response.content.startswith(magic)
    assert response.headers["content-type"].startswith("image/png" if fmt == "png" else "image/svg+xml")


def test_svg_chart_names_symbol_model_zone_and_random_weights(client: TestClient, db: Session) -> None:
    calendar = {"timezone": "Asia/Shanghai"}
    job_id = finished(client, db, meta=RANDOM_META, calendar=calendar)
    svg = client.get(f"/v1/jobs/{job_id}/chart", params={"format": "svg"}).text
    assert "SYM0.SH forecast - model random:mini - RANDOM WEIGHTS" in svg  # the first symbol by default
    assert "time (Asia/Shanghai)" in svg and "price" in svg and "close q0.1-q0.9" in svg
    hub = finished(client, db, model="kronos-small", meta=HUB_META, quantiles=())
    svg = client.get(f"/v1/jobs/{hub}/chart", params={"format": "svg"}).text
    assert "model kronos-small (NeoQuasar/Kronos-small@901c26c)" in svg and "RANDOM" not in svg
    assert "time (UTC)" in svg and "close q0.1" not in svg  # no band without quantiles


@pytest.mark.parametrize("params, status, field", [
    ({"symbol": "NOPE"}, 404, "symbol"),
    ({"format": "gif"}, 422, "format"),
])
def test_chart_errors_name_the_field(client: TestClient, db: Session, params, status, field) -> None:
    job_id = finished(client, db, meta=RANDOM_META)
    response = client.get(f"/v1/jobs/{job_id}/chart", params=params)
    assert response.status_code == status, response.text
    assert field in response.json()["error"]["details"][0]["field"]


def test_chart_of_an_unfinished_job_is_a_conflict(client: TestClient) -> None:
    job_id = client.post("/v1/jobs/forecast", json=make_forecast_request()).json()["id"]
    response = client.get(f"/v1/jobs/{job_id}/chart")
    assert response.status_code == 409 and response.json()["error"]["details"][0]["field"] == "state"


@pytest.mark.parametrize("meta, model, checkpoint, label", [
    (RANDOM_META, "random:mini", "random weights", "random weights"),
    (HUB_META, "kronos-small", "NeoQuasar/Kronos-small@901c26c", None),
    ({"model": "ft-1", "model_source": "finetuned", "model_path": "/srv/art/ft-1/model", "label": "random weights"},
     "ft-1", "/srv/art/ft-1/model", "random weights"),
], ids=["random", "hub", "finetune-of-random"])
def test_every_result_format_names_model_checkpoint_and_label(client: TestClient, db: Session, meta, model,
                                                              checkpoint, label) -> None:
    job_id = finished(client, db, model=model if not model.startswith("ft-") else "random:mini", meta=meta)
    url = f"/v1/jobs/{job_id}/result"
    made_by = client.get(url).json()["model"]
    assert (made_by["model"], made_by["checkpoint"], made_by["label"]) == (model, checkpoint, label)
    for fmt in ("csv", "parquet"):
        response = client.get(url, params={"format": fmt})
        assert unquote(response.headers["X-Kronos-Model"]) == model
        assert unquote(response.headers["X-Kronos-Checkpoint"]) == checkpoint
        assert (unquote(response.headers["X-Kronos-Label"]) if label else response.headers.get("X-Kronos-Label")) == label
    metadata = pq.read_table(io.BytesIO(client.get(url, params={"format": "parquet"}).content)).schema.metadata
    assert metadata[b"kronos.model"].decode() == model and metadata[b"kronos.checkpoint"].decode() == checkpoint
    assert metadata.get(b"kronos.label", b"").decode() == (label or "")


def test_quantiles_with_one_sample_path_are_rejected_saying_why(client: TestClient) -> None:
    body = make_forecast_request(sampling={"sample_count": 1, "seed": 1}, quantiles=[0.1, 0.9])
    response = client.post("/v1/jobs/forecast", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"][0]["field"] == "quantiles"
    assert "sample_count >= 2" in error["message"] and "equal the mean" in error["message"]
    body["sampling"]["sample_count"] = 2
    assert client.post("/v1/jobs/forecast", json=body).status_code == 202


def test_chart_of_a_pruned_job_is_gone(client: TestClient, db: Session) -> None:
    from datetime import datetime, timezone

    from kronos_jobs.db.models import Job, JobInput

    job_id = finished(client, db, meta=RANDOM_META)
    db.query(JobInput).filter(JobInput.job_id == job_id).delete()  # retention took the input only
    db.commit()
    response = client.get(f"/v1/jobs/{job_id}/chart")
    assert response.status_code == 410 and "KRONOS_RETAIN_INPUTS_DAYS" in response.json()["error"]["message"]
    db.query(Job).filter(Job.id == job_id).update({"result_pruned_at": datetime.now(timezone.utc)})
    db.commit()
    response = client.get(f"/v1/jobs/{job_id}/chart")
    assert response.status_code == 410 and "KRONOS_RETAIN_RESULTS_DAYS" in response.json()["error"]["message"]
