"""Every KRONOS_* variable takes effect, and bad combinations fail with the variable named.

The seed fork's settings never read the environment and its check reused the defaults, so nothing
caught it; here each field is set through its variable to a non-default value and read back, and a
test fails when a field is added without a row in ENVIRONMENT.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kronos_jobs.core.settings import Settings, get_settings
from model.device import resolve_device  # the device grammar; settings checks it without torch

# field -> (value of KRONOS_<FIELD>, value the Settings field must then hold); none is the default.
ENVIRONMENT: dict[str, tuple[str, object]] = {
    "data_dir": ("/srv/kronos", Path("/srv/kronos")),
    "database_url": ("postgresql+psycopg://kronos@db:5432/kronos", "postgresql+psycopg://kronos@db:5432/kronos"),
    "broker_url": ("redis://redis:6379/0", "redis://redis:6379/0"),
    "artifacts_dir": ("/srv/artifacts", Path("/srv/artifacts")),
    "hf_cache_dir": ("/srv/hf", Path("/srv/hf")),
    "model_dirs": ("/srv/models:/mnt/models", [Path("/srv/models"), Path("/mnt/models")]),  # os.pathsep-separated
    "api_host": ("0.0.0.0", "0.0.0.0"),
    "api_port": ("9001", 9001),
    "api_url": ("http://api:9001/", "http://api:9001/"),
    "max_upload_bytes": ("2048", 2048),
    "max_series_per_job": ("7", 7),
    "max_bars_per_series": ("99", 99),
    "device": (" CUDA:1 ", "cuda:1"),  # normalised
    "worker_concurrency": ("3", 3),
    "torch_threads": ("2", 2),
    "default_model": ("kronos-mini", "kronos-mini"),
    "model_cache_size": ("5", 5),
    "max_batch_size": ("8", 8),
    "autocast_dtype": ("bf16", "bf16"),
    "cpu_kernel": ("addmm", "addmm"),
    "cpu_precision": ("approximate-bf16", "approximate-bf16"),
    "forecast_soft_time_limit": ("100", 100),
    "forecast_time_limit": ("5000", 5000),
    "finetune_soft_time_limit": ("1000", 1000),
    "finetune_time_limit": ("90000", 90000),
    "visibility_timeout": ("200000", 200000),
    "lease_seconds": ("120", 120),
    "heartbeat_seconds": ("2.5", 2.5),
    "worker_stale_seconds": ("30", 30),
    "max_retries": ("0", 0),
    "broker_polling_interval": ("0.5", 0.5),
    "log_level": ("DEBUG", "DEBUG"),
    "schedule_batch_symbols": ("100", 100),
    "scheduler_interval": ("1.5", 1.5),
    "max_upload_rows": ("1000", 1000),
    "upload_parse_seconds": ("2.5", 2.5),
    "upload_parse_workers": ("3", 3),
    "upload_parse_queue": ("4", 4),
    "dispatch_interval": ("0.5", 0.5),
    "dispatch_after_seconds": ("1", 1.0),
    "transient_retries": ("7", 7),
    "retry_backoff_max": ("30", 30),
    "cancel_check_seconds": ("0.25", 0.25),
    # auth, tenants and browser safety (issue 11)
    "auth": ("on", "on"),
    "api_key": ("kj_0123456789ab_secret", "kj_0123456789ab_secret"),
    "rate_limit": ("10/second;100/minute", "10/second;100/minute"),
    "auth_cache_seconds": ("0", 0.0),
    "max_inflight_jobs": ("50", 50),
    "trusted_hosts": ("api.example.com, localhost", ["api.example.com", "localhost"]),
    "cors_origins": ('["https://ops.example.com"]', ["https://ops.example.com"]),
    "progress_write_seconds": ("0.25", 0.25),
    "worker_metrics_port": ("9101", 9101),
    # artifact store and retention
    "artifacts_url": ("s3://kronos-artifacts/prod", "s3://kronos-artifacts/prod"),
    "s3_endpoint_url": ("http://minio:9000", "http://minio:9000"),
    "model_cache_dir": ("/srv/model-cache", Path("/srv/model-cache")),
    "retain_inputs_days": ("7", 7),
    "retain_results_days": ("200", 200),
    "retain_jobs_days": ("800", 800),
    "retain_schedule_runs_days": ("30", 30),
    "retain_retired_models_days": ("0", 0),
    "prune_batch_rows": ("100", 100),
    "prune_interval_seconds": ("60", 60.0),
    "score_interval": ("60", 60.0),
    # sharing the fleet
    "queue_policy": ("fifo", "fifo"),
    "bulk_chunk_seconds": ("0.5", 0.5),
    "bulk_probe_series": ("2", 2),
    "schedule_batch_symbols_gpu": ("500", 500),
    "tenant_bulk_limit": ("2", 2),
    "split_min_series": ("16", 16),
}


def env_name(field: str) -> str:
    return f"KRONOS_{field.upper()}"


def test_every_field_has_a_row():
    assert set(ENVIRONMENT) == set(Settings.model_fields), "add the new KRONOS_* variable to ENVIRONMENT"


@pytest.mark.parametrize("field", sorted(ENVIRONMENT))
def test_variable_takes_effect(monkeypatch, field):
    raw, expected = ENVIRONMENT[field]
    assert Settings.model_fields[field].default != expected, "pick a value that differs from the default"
    monkeypatch.setenv(env_name(field), raw)
    assert getattr(Settings(), field) == expected
    get_settings.cache_clear()
    assert getattr(get_settings(), field) == expected  # the cached getter reads the same environment


def test_all_variables_together(monkeypatch):
    for field, (raw, _) in ENVIRONMENT.items():
        monkeypatch.setenv(env_name(field), raw)
    settings = Settings()
    assert {f: getattr(settings, f) for f in ENVIRONMENT} == {f: v for f, (_, v) in ENVIRONMENT.items()}
    assert settings.effective_database_url == "postgresql+psycopg://kronos@db:5432/kronos"
    assert settings.effective_broker_url == "redis://redis:6379/0"
    assert settings.effective_artifacts_dir == Path("/srv/artifacts")
    assert settings.effective_model_dirs == [Path("/srv/models"), Path("/mnt/models")]
    assert settings.effective_api_url == "http://api:9001"
    assert settings.effective_visibility_timeout == 200000
    assert settings.effective_torch_threads() == 2


def test_defaults_derive_from_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'kronos.db'}"
    assert settings.broker_dir == tmp_path.resolve() / "broker"
    assert settings.effective_artifacts_dir == tmp_path.resolve() / "artifacts"
    assert settings.effective_model_dirs == [tmp_path.resolve() / "models"]
    assert settings.effective_artifacts_url == str(tmp_path.resolve() / "artifacts")  # the local store by default
    assert settings.effective_model_cache_dir == tmp_path.resolve() / "model-cache"
    assert (settings.retain_inputs_days, settings.retain_results_days, settings.retain_jobs_days) == (30, 365, 365)
    assert settings.effective_visibility_timeout == 2 * settings.longest_time_limit
    assert settings.effective_api_url == "http://127.0.0.1:8000"


def test_model_dirs_also_read_a_json_list_and_resolve(monkeypatch, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("KRONOS_MODEL_DIRS", f'["{tmp_path / "link"}", "{tmp_path / "a:b"}"]')
    settings = Settings()
    assert settings.model_dirs == [tmp_path / "link", tmp_path / "a:b"]
    assert settings.effective_model_dirs == [(tmp_path / "real").resolve(), (tmp_path / "a:b").resolve()]
    monkeypatch.setenv("KRONOS_MODEL_DIRS", "[not json")
    with pytest.raises(ValidationError, match="KRONOS_MODEL_DIRS"):
        Settings()


@pytest.mark.parametrize("environment, named", [
    ({"KRONOS_FORECAST_SOFT_TIME_LIMIT": "3900"}, ["KRONOS_FORECAST_SOFT_TIME_LIMIT", "KRONOS_FORECAST_TIME_LIMIT"]),
    ({"KRONOS_FINETUNE_SOFT_TIME_LIMIT": "90000"}, ["KRONOS_FINETUNE_SOFT_TIME_LIMIT", "KRONOS_FINETUNE_TIME_LIMIT"]),
    ({"KRONOS_VISIBILITY_TIMEOUT": "3600"}, ["KRONOS_VISIBILITY_TIMEOUT"]),
    ({"KRONOS_HEARTBEAT_SECONDS": "40"}, ["KRONOS_HEARTBEAT_SECONDS", "KRONOS_LEASE_SECONDS"]),
    ({"KRONOS_DEVICE": "tpu"}, ["KRONOS_DEVICE", "cuda:N"]),
    ({"KRONOS_RETAIN_JOBS_DAYS": "30"}, ["KRONOS_RETAIN_JOBS_DAYS", "KRONOS_RETAIN_RESULTS_DAYS"]),
    ({"KRONOS_RETAIN_RESULTS_DAYS": "0"}, ["KRONOS_RETAIN_JOBS_DAYS", "KRONOS_RETAIN_RESULTS_DAYS"]),
], ids=["forecast-limits", "finetune-limits", "visibility", "heartbeat", "device", "jobs-before-results",
        "results-forever-jobs-not"])
def test_invalid_combinations_name_the_variable(monkeypatch, environment, named):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    for text in named:
        assert text in str(err.value)


@pytest.mark.parametrize("field, raw", [("api_port", "70000"), ("worker_concurrency", "0"),
                                        ("autocast_dtype", "fp8"), ("heartbeat_seconds", "-1"),
                                        ("cpu_kernel", "mkl"), ("cpu_precision", "bf16")])
def test_out_of_range_values_are_refused(monkeypatch, field, raw):
    monkeypatch.setenv(env_name(field), raw)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert err.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", " CUDA:1 ", "MPS", "gpu", "cuda:",
                                  "cuda:x", "cuda:-1", "tpu", "", "cpu:0"])
def test_kronos_device_accepts_exactly_what_model_device_accepts(monkeypatch, spec):
    try:
        resolve_device(spec)
        model_accepts = True
    except ValueError:
        model_accepts = False
    monkeypatch.setenv("KRONOS_DEVICE", spec)
    try:
        Settings()
        settings_accept = True
    except ValidationError:
        settings_accept = False
    assert settings_accept == model_accepts, spec


# --- auth (issue 11) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("environment, required", [
    ({}, False),  # the embedded default on loopback
    ({"KRONOS_API_HOST": "0.0.0.0"}, True),
    ({"KRONOS_DATABASE_URL": "postgresql+psycopg://kronos@db:5432/kronos"}, True),
    ({"KRONOS_AUTH": "on"}, True),
    ({"KRONOS_AUTH": "off", "KRONOS_API_HOST": "localhost"}, False),
], ids=["embedded-loopback", "all-interfaces", "postgresql", "on", "off-loopback"])
def test_auth_auto_requires_keys_unless_embedded_on_loopback(monkeypatch, environment, required):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert Settings().auth_required is required


def test_auth_off_is_refused_off_loopback(monkeypatch):
    monkeypatch.setenv("KRONOS_AUTH", "off")
    monkeypatch.setenv("KRONOS_API_HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match="KRONOS_AUTH=off"):
        Settings()


def test_a_bad_rate_limit_is_refused(monkeypatch):
    monkeypatch.setenv("KRONOS_RATE_LIMIT", "lots")
    with pytest.raises(ValidationError, match="KRONOS_RATE_LIMIT"):
        Settings()
    monkeypatch.setenv("KRONOS_RATE_LIMIT", "")
    assert Settings().rate_limit is None
