"""Fine-tune jobs: `POST /v1/jobs/finetune` (read, list and cancel them through the jobs routes).

Training bars arrive as a multipart upload (`file`: long-format CSV or Parquet with a `symbol`
column, parsed by `kronos_jobs.inputs.parsing`; `request`: the parameters as JSON) or, as a JSON body, as
symbols and a time range of the series store (`data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Depends, Header, Request, Response

from api.auth import InflightQuota
from api.deps import CallerDep, SessionDep, SettingsDep
from api.routes.jobs import ERRORS
from api.schemas import FinetuneJobCreate, FinetuneJobPublic, FinetuneParamsIn, JobPublic
from api.parsing_pool import pool_of
from api.uploads import Upload, read_json_or_upload, upload_body_doc
from kronos_jobs.core.errors import InvalidRequest, NotFound, invalid
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import series as series_crud
from kronos_jobs.inputs.parsing import BarsInput
from kronos_jobs.jobs.finetune_submit import submit_finetune

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@dataclass
class FinetuneSubmission:
    params: FinetuneParamsIn  # a FinetuneJobCreate (series store) or FinetuneParamsIn (upload)
    upload: Upload | None = None
    parsed: BarsInput | None = None  # the upload's bars, parsed off the request threads (api/parsing_pool.py)

    def bars(self, session, settings: Settings, tenant_id: str) -> tuple[pd.DataFrame, str]:
        """The long-format training bars and their source (upload format, or `store`)."""
        if self.parsed is not None:
            return self.parsed.bars, self.parsed.source
        return _store_bars(session, self.params.data, tenant_id), "store"

    def finetune_params(self, settings: Settings) -> dict:
        params = self.params.model_dump(include=set(FinetuneParamsIn.model_fields) - {"priority"})
        params["model"] = params["model"] or settings.default_model
        return params


def _store_bars(session, data, tenant_id: str) -> pd.DataFrame:
    frames = []
    for index, symbol in enumerate(data.symbols):
        field = f"data.symbols[{index}]"
        try:
            frame = series_crud.read_bars(session, tenant_id=tenant_id, symbol=symbol, freq=data.freq,
                                          start=data.start, end=data.end)
        except NotFound:
            raise invalid(field, f"no stored bars for symbol {symbol!r}" + (f" at freq {data.freq!r}" if data.freq else "")) from None
        except InvalidRequest as exc:
            raise invalid("data.freq" if exc.field == "freq" else field, exc.message) from None
        if frame.empty:
            raise invalid(field, f"no stored bars of {symbol!r} between data.start and data.end")
        frames.append(frame)
    bars = pd.concat(frames, ignore_index=True)
    return bars.dropna(axis=1, how="all").sort_values(["symbol", "timestamp"], ignore_index=True)


async def read_finetune_submission(request: Request) -> FinetuneSubmission:
    """Read the body as JSON (series store) or as a multipart upload (`file` + a `request` JSON field)."""
    params, upload = await read_json_or_upload(
        request, FinetuneJobCreate, FinetuneParamsIn, what="the CSV or Parquet training bars",
        accepted="multipart/form-data with a file, or application/json naming series-store symbols in `data`")
    parsed = None
    if upload is not None:
        parsed = await pool_of(request.app).parse_upload(
            upload.data, filename=upload.filename, content_type=upload.content_type, freq=None)
    return FinetuneSubmission(params=params, upload=upload, parsed=parsed)


FinetuneSubmissionDep = Annotated[FinetuneSubmission, Depends(read_finetune_submission)]

FINETUNE_BODY_DOC = upload_body_doc(
    "FinetuneJobCreate",
    file_description="Long-format CSV or Parquet: symbol, timestamp, open, high, low, close[, volume, amount].",
    request_description="JSON of FinetuneParamsIn.",
)


@router.post("/finetune", status_code=202, response_model=FinetuneJobPublic, responses=ERRORS, openapi_extra=FINETUNE_BODY_DOC,
             dependencies=[InflightQuota])
def create_finetune_job(
    submission: FinetuneSubmissionDep,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> FinetuneJobPublic:
    """Submit a fine-tune job."""
    bars, source = submission.bars(session, settings, caller.tenant_id)
    job, warnings = submit_finetune(session, settings, tenant_id=caller.tenant_id, request=submission.finetune_params(settings),
                                    bars=bars, source=source, idempotency_key=idempotency_key,
                                    priority=submission.params.priority)
    response.headers["Location"] = f"{router.prefix}/{job.id}"
    return FinetuneJobPublic(**JobPublic.from_row(job, caller).model_dump(), warnings=warnings)
