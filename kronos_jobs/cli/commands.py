"""`kronos-jobs`: run the processes (api, worker, beat, up), migrate, and talk to the API.

    kronos-jobs api                                  # uvicorn on KRONOS_API_HOST:KRONOS_API_PORT
    kronos-jobs worker --pool cpu --concurrency 2
    kronos-jobs db upgrade
    kronos-jobs submit bars.csv --model kronos-small --pred-len 24 --freq 5min
    kronos-jobs wait JOB                             # progress bar; exit 0 only when succeeded
    kronos-jobs result JOB -o forecast.parquet       # or a table on stdout
    kronos-jobs status JOB | workers | models
    kronos-jobs jobs --state running | cancel JOB | schedules | result JOB --plot chart.png
    kronos-jobs keys create --tenant acme --scope read --scope submit   # prints the key once
    kronos-jobs prune --dry-run                      # what retention (KRONOS_RETAIN_*) would delete

Client commands talk to KRONOS_API_URL (default http://KRONOS_API_HOST:KRONOS_API_PORT) through
httpx, sending KRONOS_API_KEY as `Authorization: Bearer`, and read nothing else. Server commands import their machinery lazily, so a client command
never imports torch, celery or sqlalchemy.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import httpx

from kronos_jobs.core.names import TERMINAL_STATES, DevicePreference, JobKind, JobState, Pool
from kronos_jobs.core.settings import Settings, get_settings

# `wait` exit codes: 0 only when every symbol succeeded, so scripts can chain `&&`.
EXIT_CODES = {
    JobState.SUCCEEDED.value: 0,
    JobState.FAILED.value: 1,
    JobState.PARTIALLY_SUCCEEDED.value: 2,
    JobState.CANCELLED.value: 3,
}
EXIT_TIMEOUT = 124  # like coreutils `timeout`
RESULT_FORMATS = ("json", "csv", "parquet")


# --- talking to the API --------------------------------------------------------------------------


class ApiClient:
    """A thin httpx wrapper: API errors and an unreachable API become one-line ClickExceptions."""

    def __init__(self, base_url: str, *, timeout: float = 60.0, http: httpx.Client | None = None,
                 api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}  # = Settings.api_auth_headers
        # `http` lets tests pass an in-process client (fastapi.testclient.TestClient is an httpx.Client).
        self._client = http or httpx.Client(base_url=self.base_url, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            headers = {**self.headers, **(kwargs.pop("headers", None) or {})}
            response = self._client.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise click.ClickException(
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc}). "
                "Start it with `kronos-jobs api` (or `kronos-jobs up`), or point KRONOS_API_URL / --api-url at it."
            ) from None
        if response.status_code == 401 and not self.headers:
            raise click.ClickException(f"{describe_error(response)}\nSet KRONOS_API_KEY to a key "
                                       "(`kronos-jobs keys create` on the server makes one).")
        if response.is_error:
            raise click.ClickException(describe_error(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()


def describe_error(response: httpx.Response) -> str:
    """`HTTP 422 invalid_request: sampling.top_p: ...` plus one line per further detail."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    lines = [f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}"]
    for detail in error.get("details", [])[1:]:
        lines.append(f"  {detail.get('field')}: {detail.get('message')}")
    return "\n".join(lines)


def _client(ctx: click.Context) -> ApiClient:
    obj = ctx.find_root().obj
    http = obj.get("http")
    url = obj.get("api_url") or (str(http.base_url) if http is not None else obj["settings"].effective_api_url)
    return ApiClient(url, http=http, api_key=obj["settings"].api_key)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


# --- the command group ---------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api-url", default=None, help="API base URL (default: KRONOS_API_URL or http://KRONOS_API_HOST:KRONOS_API_PORT).")
@click.pass_context
def main(ctx: click.Context, api_url: str | None) -> None:
    """Kronos forecast and fine-tune jobs."""
    ctx.ensure_object(dict)
    ctx.obj.setdefault("settings", get_settings())
    from kronos_jobs.core.redaction import install

    install(ctx.obj["settings"])
    if api_url:
        ctx.obj["api_url"] = api_url


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj["settings"]


# --- processes -------------------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Default: KRONOS_API_HOST.")
@click.option("--port", type=int, default=None, help="Default: KRONOS_API_PORT.")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from api.main import create_app

    settings = _settings(ctx)
    # The app must know the address it is bound to: KRONOS_AUTH allows running keyless only on loopback.
    settings = settings.model_copy(update={"api_host": host or settings.api_host, "api_port": port or settings.api_port})
    if settings.auth == "off" and not settings.binds_loopback:
        raise click.UsageError(f"KRONOS_AUTH=off needs a loopback address, not --host {settings.api_host}")
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level=settings.log_level.lower())


@main.command()
@click.option("--pool", type=click.Choice([p.value for p in Pool]), default=Pool.CPU.value, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Prefork children (default: KRONOS_WORKER_CONCURRENCY).")
@click.pass_context
def worker(ctx: click.Context, pool: str, concurrency: int | None) -> None:
    """Run a worker on one pool's queues."""
    from kronos_jobs.runtime.worker import start_worker

    start_worker(Pool(pool), concurrency, _settings(ctx))


@main.command()
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the scheduler (exactly one per deployment)."""
    from kronos_jobs.broker.celery_app import make_celery

    settings = _settings(ctx)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    app.set_current()
    app.Beat(loglevel=settings.log_level.upper(), schedule=str(settings.data_dir / "celerybeat-schedule")).run()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the newest schema (safe while others run)."""
    from kronos_jobs.db.migrate import upgrade

    settings = _settings(ctx)
    upgrade(settings)
    from kronos_jobs.core.redaction import redact

    click.echo(f"database at head: {redact(settings.effective_database_url)}")


@main.command()
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def prune(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Delete inputs, results, job rows, schedule runs and retired models' files past KRONOS_RETAIN_*."""
    from kronos_jobs.jobs.retention import prune as prune_now  # the database layer, on this command only

    report = prune_now(_settings(ctx), dry_run=dry_run)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))


# --- client commands -------------------------------------------------------------------------------


def _csv_floats(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.1,0.5,0.9, got {value!r}") from None


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Model name, random:<size>, directory under KRONOS_MODEL_DIRS or fine-tuned id.")
@click.option("--device", type=click.Choice([d.value for d in DevicePreference]), default=None)
@click.option("--lookback", type=int, default=None)
@click.option("--pred-len", type=int, default=None)
@click.option("--freq", default=None, help="Bar frequency of a CSV/Parquet file (pandas alias: 5min, 1h, 1D).")
@click.option("--quantiles", default=None, help="Comma-separated levels, e.g. 0.1,0.5,0.9.")
@click.option("--temperature", type=float, default=None)
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--sample-count", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--priority", type=int, default=None, help="0..9, higher runs first (default 6; schedule runs use 3).")
@click.option("--idempotency-key", default=None, help="Resubmitting with the same key returns the same job.")
@click.pass_context
def submit(ctx: click.Context, path: Path, idempotency_key: str | None, **options: Any) -> None:
    """Submit a forecast: a JSON request, or a long-format CSV/Parquet file. Prints the job id."""
    params = _request_params(options)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    client = _client(ctx)
    if path.suffix.lower() == ".json":
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{path} is not JSON: {exc}") from None
        params.pop("freq", None)
        sampling = {**body.get("sampling", {}), **params.pop("sampling", {})}
        body.update(params, **({"sampling": sampling} if sampling else {}))
        job = client.json("POST", "/v1/jobs/forecast", json=body, headers=headers)
    else:
        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        job = client.json("POST", "/v1/jobs/forecast", files=files, data={"request": json.dumps(params)}, headers=headers)
    click.echo(f"queued on {job['queue']}: {job['routing_reason']}", err=True)
    click.echo(job["id"])


def _request_params(options: dict[str, Any]) -> dict[str, Any]:
    """The non-None options as request fields (sampling ones nested)."""
    sampling_keys = ("temperature", "top_k", "top_p", "sample_count", "seed")
    params = {k: v for k, v in options.items() if v is not None and k not in sampling_keys}
    if "quantiles" in params:
        params["quantiles"] = _csv_floats(params["quantiles"])
    sampling = {k: options[k] for k in sampling_keys if options.get(k) is not None}
    if sampling:
        params["sampling"] = sampling
    return params


def _job_summary(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    meta = job.get("metadata") or {}
    lines = [
        f"job       {job['id']} ({job['kind']}, model {job['model']}"
        + (f", {meta['label']}" if meta.get("label") else "") + ")",
        f"state     {job['state']}" + (" (cancel requested)" if job.get("cancel_requested") and job["state"] == "running" else ""),
        f"progress  {progress.get('done', 0)}/{progress.get('total', 0)}",
        f"queue     {job['queue']}: {job['routing_reason']}",
        f"created   {job['created_at']}" + (f"  finished {job['finished_at']}" if job.get("finished_at") else ""),
    ]
    device = meta.get("device_resolved") or meta.get("device")
    if device:
        lines.append(f"device    {device}" + (f" ({meta['device_name']})" if meta.get("device_name") else ""))
    detail = progress.get("detail") or {}
    if job["kind"] == "finetune" and detail.get("phase"):
        losses = "".join(f" {k.split('_')[0]} {detail[k]:.4g}" for k in ("train_loss", "val_loss") if detail.get(k) is not None)
        lines.append(f"training  {detail['phase']} epoch {detail.get('epoch')}/{detail.get('epochs')} step "
                     f"{detail.get('step')}/{detail.get('total_steps')}{losses} eta {detail.get('eta_seconds')} s")
    if meta.get("finetuned_model_id"):
        lines.append(f"model id  {meta['finetuned_model_id']} (name it as a forecast's model)")
    if meta.get("device_warning"):
        lines.append(f"warning   {meta['device_warning']}")
    if job.get("error"):
        lines.append(f"error     {job['error'].get('code')}: {job['error'].get('message')}")
    for item in job.get("symbol_errors") or []:
        lines.append(f"  {item.get('symbol')}: {item.get('code')}: {item.get('message')}")
    return "\n".join(lines)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_context
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's state, progress, routing, device and errors."""
    job = _client(ctx).json("GET", f"/v1/jobs/{job_id}")
    click.echo(json.dumps(job, indent=2) if as_json else _job_summary(job))


@main.command()
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 124).")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None, interval: float) -> None:
    """Wait for a job with a progress bar; exit 0 on succeeded, 1 failed, 2 partial, 3 cancelled."""
    from kronos_jobs.client.progress import ProgressBar

    client = _client(ctx)
    deadline = None if timeout is None else time.monotonic() + timeout
    job = client.json("GET", f"/v1/jobs/{job_id}")
    # Counted from what was done when watching began, so a finished job shows no made-up rate.
    with ProgressBar(job, file=sys.stderr) as bar:
        while JobState(job["state"]) not in TERMINAL_STATES:
            if deadline is not None and time.monotonic() >= deadline:
                bar.close()
                click.echo(f"job {job_id} still {job['state']} after {timeout:g} s", err=True)
                ctx.exit(EXIT_TIMEOUT)
            time.sleep(interval)
            job = client.json("GET", f"/v1/jobs/{job_id}")
            bar.update(job)
    click.echo(_job_summary(job), err=True)
    click.echo(job["state"])
    ctx.exit(EXIT_CODES[job["state"]])


@main.command()
@click.argument("job_id")
@click.option("--format", "fmt", type=click.Choice(RESULT_FORMATS), default=None, help="Default: from the -o suffix, else a table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to this file.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the job's chart (.png or .svg) from GET /v1/jobs/{id}/chart.")
@click.option("--symbol", default=None, help="With --plot: the symbol to draw (default: the first).")
@click.pass_context
def result(ctx: click.Context, job_id: str, fmt: str | None, output: Path | None, plot: Path | None,
           symbol: str | None) -> None:
    """Fetch a finished job's forecast: to a file, or a table on stdout; --plot saves its chart."""
    client = _client(ctx)
    if plot is not None:
        chart_format = "svg" if plot.suffix.lower() == ".svg" else "png"
        params = {"format": chart_format, **({"symbol": symbol} if symbol else {})}
        plot.write_bytes(client.request("GET", f"/v1/jobs/{job_id}/chart", params=params).content)
        click.echo(f"wrote {plot} (chart, {chart_format})", err=True)
    if output is not None:
        fmt = fmt or (output.suffix.lstrip(".").lower() if output.suffix.lstrip(".").lower() in RESULT_FORMATS else "csv")
        response = client.request("GET", f"/v1/jobs/{job_id}/result", params={"format": fmt})
        output.write_bytes(response.content)
        click.echo(f"wrote {output} ({fmt}, {len(response.content)} bytes)", err=True)
        return
    if fmt == "parquet":
        raise click.UsageError("Parquet is binary: give -o FILE")
    if fmt in ("json", "csv"):
        click.echo(client.request("GET", f"/v1/jobs/{job_id}/result", params={"format": fmt}).text)
        return
    body = client.json("GET", f"/v1/jobs/{job_id}/result", params={"format": "json"})
    click.echo(_table(body["rows"], body["columns"]) if body["rows"] else "(no rows)")
    for item in body["errors"]:
        click.echo(f"error {item.get('symbol')}: {item.get('code')}: {item.get('message')}", err=True)


@main.command("jobs")
@click.option("--state", type=click.Choice([s.value for s in JobState]), default=None)
@click.option("--kind", type=click.Choice([k.value for k in JobKind]), default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.pass_context
def jobs_list(ctx: click.Context, state: str | None, kind: str | None, limit: int) -> None:
    """List jobs, newest first."""
    params = {"limit": limit, **({"state": state} if state else {}), **({"kind": kind} if kind else {})}
    from kronos_jobs.jobs.registry import provenance

    rows = _client(ctx).json("GET", "/v1/jobs", params=params)["data"]
    for row in rows:
        progress = row.get("progress") or {}
        row["progress"] = f"{progress.get('done', 0)}/{progress.get('total', 0)}"
        label = provenance(row.get("metadata"), row["model"])["label"]
        row["model"] = f"{row['model']} ({label})" if label else row["model"]
    columns = ["id", "kind", "state", "progress", "model", "queue", "created_at", "finished_at"]
    click.echo(_table(rows, columns) if rows else "no jobs")


@main.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: a queued one never starts, a running one stops within a decode step."""
    job = _client(ctx).json("POST", f"/v1/jobs/{job_id}/cancel")
    click.echo(f"{job['id']} {job['state']}" + (" (cancel requested)" if job.get("cancel_requested")
                                               and job["state"] == "running" else ""))


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include workers seen in the last 7 days.")
@click.pass_context
def workers(ctx: click.Context, show_all: bool) -> None:
    """List workers with their pools, queues and devices."""
    params = {"seen_within": 7 * 86_400} if show_all else {}
    rows = _client(ctx).json("GET", "/v1/workers", params=params)["data"]
    for row in rows:
        row["queues"] = ",".join(row["queues"])
        row["live"] = "yes" if row["live"] else "no"
    columns = ["id", "pool", "live", "queues", "device_resolved", "device_name", "device_warning", "heartbeat_at"]
    click.echo(_table(rows, columns) if rows else "no workers seen; start one with `kronos-jobs worker --pool cpu`")


@main.command()
@click.pass_context
def models(ctx: click.Context) -> None:
    """List the models a forecast can name."""
    rows = _client(ctx).json("GET", "/v1/models")["data"]
    click.echo(_table(rows, ["id", "kind", "label", "max_context", "model_repo", "model_revision", "base_model"]))


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An upstream Kronos CSV fine-tune YAML (finetune_csv); keys without a meaning here are warned about.")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Training bars, CSV or Parquet (default: data.data_path of the YAML).")
@click.option("--symbol", default=None, help="Symbol for a file without a symbol column (default: the file's stem).")
@click.option("--model", default=None, help="Base model (default: from model_paths, else KRONOS_DEFAULT_MODEL).")
@click.option("--device", default=None, help="Queue preference auto|cpu|gpu; with --local a torch device: cpu, cuda, cuda:N, mps "
                                             "(default: from device.use_cuda / device_id).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a fine-tune parameter, e.g. --set max_steps=200.")
@click.option("--local", is_flag=True, help="Train in this process on --device, without the API or a queue.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="--local: checkpoints and the trained model (default ./kronos-finetune).")
@click.option("--priority", type=int, default=None, help="0..9, higher runs first (default 6); not with --local.")
@click.option("--idempotency-key", default=None)
@click.pass_context
def finetune(ctx: click.Context, config_path: Path, data_path: Path | None, symbol: str | None, model: str | None,
             device: str | None, overrides: tuple[str, ...], local: bool, out_dir: Path | None, priority: int | None,
             idempotency_key: str | None) -> None:
    """Fine-tune from an upstream YAML: submit a job (prints its id) or, with --local, train here."""
    from kronos_jobs.cli.finetune_yaml import ARTIFACTS_NOTE, load_upstream_yaml, prepare_data_file
    from kronos_jobs.core.errors import UpstreamConfigError

    try:
        upstream = load_upstream_yaml(config_path)
    except UpstreamConfigError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in upstream.warnings:
        click.echo(f"warning: {warning}", err=True)
    params = dict(upstream.params)
    params.update(_overrides(overrides))
    if model:
        params["model"] = model
    path = data_path or upstream.data_path
    if path is None or not Path(path).is_file():
        raise click.UsageError(f"no training data: data.data_path is {str(path)!r}; give --data FILE")
    try:
        data, filename = prepare_data_file(path, symbol=symbol, test_ratio=upstream.test_ratio)
    except (UpstreamConfigError, ValueError, OSError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    if local:
        _finetune_local(ctx, params, data, filename, device or upstream.local_device, out_dir,
                        extra_model_dirs=upstream.checkpoint_dirs, upstream_dirs=upstream.output_dirs)
        return
    if upstream.output_dirs:
        click.echo(f"warning: model_paths: {ARTIFACTS_NOTE}", err=True)
    params["device"] = device or params.get("device", "auto")
    if priority is not None:
        params["priority"] = priority
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    job = _client(ctx).json("POST", "/v1/jobs/finetune", files={"file": (filename, data, "application/octet-stream")},
                            data={"request": json.dumps(params)}, headers=headers)
    click.echo(f"queued on {job['queue']}: {job['routing_reason']}", err=True)
    for warning in job.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    click.echo(job["id"])


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _finetune_local(ctx: click.Context, params: dict[str, Any], data: bytes, filename: str, device: str,
                    out_dir: Path | None, *, extra_model_dirs: Sequence[Path] = (),
                    upstream_dirs: dict[str, Path] | None = None) -> None:
    """The same training as a worker's (kronos_jobs.jobs.training.train_pair), in this process.

    The checkpoint directories the config file names are trusted as model roots here (it is the
    user's own process); `upstream_dirs` (phase -> upstream's best_model directory) get a copy of
    each trained half besides our output.
    """
    from kronos_jobs.core.errors import InvalidRequest
    from kronos_jobs.inputs.parsing import parse_upload
    from kronos_jobs.jobs.registry import local_model_dir
    from kronos_jobs.jobs.training import run_local

    settings = _settings(ctx)
    params.setdefault("model", settings.default_model)
    params.pop("device", None)

    def show(event: dict[str, Any]) -> None:
        losses = " ".join(f"{k} {event[k]:.4f}" for k in ("train_loss", "val_loss") if event.get(k) is not None)
        click.echo(f"{event['phase']} epoch {event.get('epoch')}/{event.get('epochs')} step {event['done']}/{event['total']} "
                   f"{losses} eta {event.get('eta_seconds')} s", err=True)

    try:
        bars = parse_upload(data, filename=filename, content_type=None, freq=None, settings=settings).bars
        summary = run_local(params, bars, device=device, work_dir=out_dir or Path("kronos-finetune"), settings=settings,
                            on_event=show, on_warning=lambda w: click.echo(f"warning: {w}", err=True),
                            model_dirs=[*settings.effective_model_dirs, *extra_model_dirs])
    except InvalidRequest as exc:
        raise click.ClickException(exc.message) from None
    for phase, outcome in summary["metrics"]["phases"].items():
        if phase in (upstream_dirs or {}) and not outcome.get("skipped"):
            half = "model" if phase == "predictor" else "tokenizer"
            shutil.copytree(Path(summary["model_path"]) / half, upstream_dirs[phase], dirs_exist_ok=True)
            click.echo(f"{phase} also saved to {upstream_dirs[phase]} (upstream's layout)", err=True)
    if summary["device_warning"]:
        click.echo(f"warning: {summary['device_warning']}", err=True)
    if local_model_dir(summary["model_path"], settings.effective_model_dirs) is not None:
        click.echo(f"model saved to {summary['model_path']} (use it as --model / \"model\" in forecasts)", err=True)
    else:
        roots = ", ".join(map(str, settings.effective_model_dirs))
        click.echo(f"model saved to {summary['model_path']}; to forecast with it, move it under KRONOS_MODEL_DIRS "
                   f"({roots}) or give --out-dir there", err=True)
    click.echo(json.dumps(summary, default=str))


# --- series store and schedules -------------------------------------------------------------------


@main.group()
def series() -> None:
    """The series store: import bars, list symbols."""


@series.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--symbol", default=None, help="The file holds this one symbol (no symbol column needed).")
@click.option("--freq", default=None, help="Bar frequency (pandas alias: 5min, 1h, 1D) of symbols without a freq column value.")
@click.pass_context
def series_import(ctx: click.Context, path: Path, symbol: str | None, freq: str | None) -> None:
    """Import a long-format CSV or Parquet file (all or nothing); prints the stored symbols."""
    from urllib.parse import quote

    url = f"/v1/series/{quote(symbol, safe='/')}/bars" if symbol else "/v1/series"
    files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
    result = _client(ctx).json("POST", url, files=files, data={"freq": freq} if freq else {})
    click.echo(f"{result['rows_written']} bar(s) written", err=True)
    click.echo(_table(result["series"], ["symbol", "freq", "first_timestamp", "last_timestamp", "rows"]))


@series.command("list")
@click.option("--freq", default=None)
@click.pass_context
def series_list(ctx: click.Context, freq: str | None) -> None:
    """List stored symbols with first/last timestamp and row count."""
    data = _client(ctx).json("GET", "/v1/series", params={"freq": freq} if freq else {})["data"]
    click.echo(_table(data, ["symbol", "freq", "first_timestamp", "last_timestamp", "rows"]))


@main.group(invoke_without_command=True)
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Schedules: list them (the default), their runs, run one now."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedules_list)


@schedules.command("list")
@click.pass_context
def schedules_list(ctx: click.Context) -> None:
    """List schedules."""
    data = _client(ctx).json("GET", "/v1/schedules")["data"]
    click.echo(_table(data, ["id", "name", "cron", "timezone", "model", "enabled", "next_run_at"]) if data
               else "no schedules")


@schedules.command("runs")
@click.argument("schedule_id")
@click.pass_context
def schedules_runs(ctx: click.Context, schedule_id: str) -> None:
    """List a schedule's runs, newest first."""
    data = _client(ctx).json("GET", f"/v1/schedules/{schedule_id}/runs")["data"]
    for row in data:
        row["jobs"] = len(row.get("job_ids") or [])
        row["errors"] = len(row.get("symbol_errors") or [])
    click.echo(_table(data, ["id", "trigger", "scheduled_for", "state", "jobs", "errors", "finished_at"]) if data
               else "no runs")


@schedules.command("run")
@click.argument("schedule_id")
@click.pass_context
def schedules_run(ctx: click.Context, schedule_id: str) -> None:
    """Run a schedule now; prints the run id."""
    run = _client(ctx).json("POST", f"/v1/schedules/{schedule_id}/run")
    click.echo(run["id"])


# --- API keys (server side: they talk to the database, like `db upgrade`) -------------------------


@main.group()
def keys() -> None:
    """API keys: create (shown once), list, revoke."""


@keys.command("create")
@click.option("--tenant", default="default", show_default=True, help="The tenant whose jobs, series, schedules and models the key reaches.")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["read", "submit", "admin"]),
              default=("read", "submit"), show_default=True, help="Repeat for several; admin includes the others.")
@click.option("--name", default="", help="A label to recognise the key by in `keys list`.")
@click.pass_context
def keys_create(ctx: click.Context, tenant: str, scopes: tuple[str, ...], name: str) -> None:
    """Create a key; prints the token on stdout, once (only its SHA-256 is stored)."""
    from kronos_jobs.core.errors import InvalidRequest
    from kronos_jobs.crud import api_keys
    from kronos_jobs.db.migrate import upgrade
    from kronos_jobs.db.session import session_scope

    settings = _settings(ctx)
    upgrade(settings)
    try:
        with session_scope(settings) as session:
            key, token = api_keys.create_key(session, tenant_id=tenant, scopes=scopes, name=name)
            summary = f"key {key.id} for tenant {key.tenant_id}, scopes {','.join(key.scopes)}"
    except InvalidRequest as exc:
        raise click.BadParameter(exc.message) from None
    click.echo(f"created {summary}; the token below is shown only now:", err=True)
    click.echo(token)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.pass_context
def keys_list(ctx: click.Context, tenant: str | None, include_revoked: bool) -> None:
    """List keys (ids, tenants, scopes; never the tokens)."""
    from kronos_jobs.crud import api_keys
    from kronos_jobs.db.session import session_scope

    with session_scope(_settings(ctx)) as session:
        rows = [{"id": k.id, "tenant": k.tenant_id, "scopes": ",".join(k.scopes), "name": k.name,
                 "created_at": k.created_at.isoformat(timespec="seconds"),
                 "revoked_at": k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else None}
                for k in api_keys.list_keys(session, tenant_id=tenant, include_revoked=include_revoked)]
    click.echo(_table(rows, ["id", "tenant", "scopes", "name", "created_at", "revoked_at"]))


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by its id (the part after `kj_` in the token); effective on the next request."""
    from kronos_jobs.core.errors import NotFound
    from kronos_jobs.crud import api_keys
    from kronos_jobs.db.session import session_scope

    try:
        with session_scope(_settings(ctx)) as session:
            key = api_keys.revoke_key(session, key_id=key_id)
            click.echo(f"revoked key {key.id} of tenant {key.tenant_id}")
    except NotFound as exc:
        raise click.ClickException(exc.message) from None


# --- the one-machine launcher (kronos_jobs/runtime/launcher.py) --------------------------------


# --- backtests and scores (issue 10) ---------------------------------------------------------------

# The metrics table the CLI prints: the columns a reader compares first; every column is in the API's.
METRIC_COLUMNS = ("model", "lookback", "step", "horizon", "n", "mae", "rmse", "smape", "mase", "directional_accuracy",
                  "crps", "skill", "dm_pvalue")


def _csv_ints(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{option}: expected comma-separated whole numbers such as 250,280, got {value!r}") from None


def _csv_words(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def metrics_text(body: dict[str, Any], per_step: bool = False) -> str:
    """A metrics response as a table: the sub-horizon rows (steps 1..h pooled), or with `per_step`
    every step too (columns that are all empty, such as crps of a greedy run, are left out)."""
    rows = [r for r in body["rows"] if per_step or r.get("horizon") is not None]
    columns = [c for c in (*METRIC_COLUMNS, *(c for c in body["columns"] if c.startswith(("pinball_", "coverage_"))))
               if c in body["columns"] and any(r.get(c) is not None for r in rows)]
    if "symbol" in body["columns"]:
        columns.insert(1, "symbol")
    return _table(rows, columns) if rows else "(no rows)"


@main.command()
@click.argument("path", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--symbols", default=None, help="Comma-separated symbols of the series store (instead of PATH).")
@click.option("--start", default=None, help="With --symbols: first bar time (ISO 8601).")
@click.option("--end", default=None, help="With --symbols: last bar time (ISO 8601).")
@click.option("--models", default=None, help="Comma-separated models (default KRONOS_DEFAULT_MODEL).")
@click.option("--lookbacks", default=None, help="Comma-separated context lengths, e.g. 250,280.")
@click.option("--horizon", type=int, default=None, help="Steps forecast from each origin.")
@click.option("--horizons", default=None, help="Comma-separated sub-horizons also reported, e.g. 2,3.")
@click.option("--n-windows", type=int, default=None, help="Rolling origins per symbol.")
@click.option("--step-size", type=int, default=None, help="Bars between origins (default: horizon).")
@click.option("--origins", default=None, help="Comma-separated origin times instead of --n-windows.")
@click.option("--baselines", default=None, help="Comma-separated: naive, seasonal_naive, drift (default all).")
@click.option("--quantiles", default=None, help="Comma-separated levels, e.g. 0.1,0.9 (need --sample-count >= 2).")
@click.option("--repeats", type=int, default=None, help="Forecasts per origin with seeds seed, seed+1, ...")
@click.option("--device", type=click.Choice([d.value for d in DevicePreference]), default=None)
@click.option("--freq", default=None, help="Bar frequency of a CSV/Parquet file, or of --symbols in the store.")
@click.option("--temperature", type=float, default=None)
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--sample-count", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--priority", type=int, default=None, help="0..9, higher runs first (default 3: a backtest is bulk work).")
@click.option("--by-symbol", is_flag=True, help="Print the per-symbol metrics.")
@click.option("--per-step", is_flag=True, help="Print every step's row, not only the sub-horizons (steps 1..h pooled).")
@click.option("--no-wait", is_flag=True, help="Print the job id and return.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between progress polls.")
@click.pass_context
def backtest(ctx: click.Context, path: Path | None, symbols: str | None, start: str | None, end: str | None,
             by_symbol: bool, per_step: bool, no_wait: bool, interval: float, **options: Any) -> None:
    """Backtest models on a CSV/Parquet/JSON file or stored symbols: submit, show progress, print metrics."""
    if (path is None) == (symbols is None):
        raise click.UsageError("give a PATH or --symbols (not both)")
    params = _request_params({k: v for k, v in options.items() if k not in ("models", "lookbacks", "horizons", "origins", "baselines")})
    for name, value in (("models", _csv_words(options["models"])), ("lookbacks", _csv_ints(options["lookbacks"], "--lookbacks")),
                        ("horizons", _csv_ints(options["horizons"], "--horizons")),
                        ("origins", _csv_words(options["origins"])), ("baselines", _csv_words(options["baselines"]))):
        if value is not None:
            params[name] = value
    client = _client(ctx)
    if symbols is not None:
        store = {"symbols": _csv_words(symbols), "freq": params.pop("freq", None), "start": start, "end": end}
        job = client.json("POST", "/v1/jobs/backtest", json={**params, "series_store": {k: v for k, v in store.items() if v}})
    elif path.suffix.lower() == ".json":
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{path} is not JSON: {exc}") from None
        params.pop("freq", None)
        job = client.json("POST", "/v1/jobs/backtest", json={**body, **params})
    else:
        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        job = client.json("POST", "/v1/jobs/backtest", files=files, data={"request": json.dumps(params)})
    click.echo(f"backtest {job['id']} queued on {job['queue']}: {job['progress']['total']} forecasts", err=True)
    if no_wait:
        click.echo(job["id"])
        return
    from tqdm import tqdm

    with tqdm(total=job["progress"]["total"] or None, desc=job["id"][:8], unit="forecast", file=sys.stderr,
              dynamic_ncols=True) as bar:
        while JobState(job["state"]) not in TERMINAL_STATES:
            time.sleep(interval)
            job = client.json("GET", f"/v1/jobs/{job['id']}")
            bar.n = job["progress"]["done"]
            bar.set_postfix_str(job["state"])
            bar.refresh()
    if job["state"] in (JobState.FAILED.value, JobState.CANCELLED.value):
        click.echo(_job_summary(job), err=True)
        ctx.exit(EXIT_CODES[job["state"]])
    metrics = client.json("GET", f"/v1/jobs/{job['id']}/metrics", params={"by": "symbol" if by_symbol else "all"})
    click.echo(metrics_text(metrics, per_step))
    click.echo(f"rows: kronos-jobs result {job['id']}   metrics: GET /v1/jobs/{job['id']}/metrics", err=True)


@main.command()
@click.option("--schedule", default=None, help="Only forecasts of this schedule's runs.")
@click.option("--model", "models", multiple=True, help="Repeat for several; default every model.")
@click.option("--symbol", "symbols", multiple=True, help="Repeat for several; default every symbol.")
@click.option("--since", default=None, help="Only forecast bars at or after this time (ISO 8601).")
@click.option("--by-symbol", is_flag=True, help="A row per symbol.")
@click.pass_context
def scores(ctx: click.Context, schedule: str | None, models: tuple[str, ...], symbols: tuple[str, ...],
           since: str | None, by_symbol: bool) -> None:
    """Live scores of stored forecasts against persistence (schedule runs, and forecasts with score: true)."""
    query: dict[str, Any] = {"model": list(models), "symbol": list(symbols), "by": "symbol" if by_symbol else "all"}
    query.update({k: v for k, v in (("schedule", schedule), ("since", since)) if v})
    body = _client(ctx).json("GET", "/v1/scores", params=query)
    columns = [c for c in body["columns"] if c not in ("first_timestamp",)]
    click.echo(_table(body["rows"], columns) if body["rows"] else "(no scored forecasts yet)")


@main.command()
@click.pass_context
def up(ctx: click.Context) -> None:
    """Run the API, a CPU worker and the scheduler together (embedded default)."""
    from kronos_jobs.runtime import launcher

    ctx.exit(launcher.up(_settings(ctx)))


@main.command()
@click.option("--model", default=None, help="Default: KRONOS_DEFAULT_MODEL; random:small needs no download.")
@click.option("--symbols", type=int, default=12, show_default=True)
@click.option("--lookback", type=int, default=400, show_default=True)
@click.option("--pred-len", type=int, default=48, show_default=True)
@click.option("--device", type=click.Choice([d.value for d in DevicePreference]), default="auto", show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.pass_context
def demo(ctx: click.Context, **options: Any) -> None:
    """Forecast sample data end to end: progress bar, summary, Parquet and a chart."""
    from kronos_jobs.cli import demo as demo_run

    ctx.exit(demo_run.demo(_settings(ctx), demo_run.DemoOptions(**options)))

