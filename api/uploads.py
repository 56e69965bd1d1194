"""Request bodies shared by the routes that take either JSON or a multipart file upload.

One place for: validating a JSON text against a schema with the field path prefixed, reading a
size-capped multipart upload (`file` + an optional `request` JSON field), and the OpenAPI
description of such a body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.nul_bytes import nul_in_json
from kronos_jobs.core.errors import PayloadTooLarge, invalid

# Multipart limits besides the file's own size cap: one file, a few small text fields.
MAX_FORM_FIELDS = 4
MAX_TEXT_PART_BYTES = 1024 * 1024


@dataclass
class Upload:
    data: bytes
    filename: str | None
    content_type: str | None


def validate_json(schema: type[BaseModel], raw: bytes | str, prefix: tuple[str, ...]) -> Any:
    """`schema` parsed from JSON text; errors name the field under `prefix` (e.g. request.pred_len)."""
    raw_bytes = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    if (field := nul_in_json(raw_bytes, ".".join(prefix[1:]) if prefix[:1] == ("body",) else ".".join(prefix))) is not None:
        raise invalid(field, "must not contain NUL characters (\\u0000)")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from None


async def read_upload(request: Request, params_schema: type[BaseModel], *, what: str) -> tuple[Any, Upload]:
    """The multipart `file` (capped at KRONOS_MAX_UPLOAD_BYTES) and the `request` JSON field's params."""
    limit = request.app.state.settings.max_upload_bytes
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_TEXT_PART_BYTES) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise invalid("file", f"attach {what} as the multipart field `file`")
        data = await file.read(limit + 1)
        if len(data) > limit:
            problem = f"more than {limit} bytes (KRONOS_MAX_UPLOAD_BYTES)"
            raise PayloadTooLarge(f"file: {problem}", field="file", details=[{"field": "file", "message": problem}])
        raw = form.get("request") or "{}"
        if not isinstance(raw, str):
            raise invalid("request", "send the parameters as a JSON text field, not a file")
        params = validate_json(params_schema, raw, ("request",))
        return params, Upload(data, file.filename, file.content_type)


async def read_json_or_upload(request: Request, json_schema: type[BaseModel], upload_schema: type[BaseModel], *,
                              what: str, accepted: str) -> tuple[Any, Upload | None]:
    """A JSON body parsed as `json_schema`, or a multipart upload whose `request` field is `upload_schema`.

    Anything else is a 415 whose message ends with `accepted` (what this route takes).
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        body = await request.body()
        return await run_in_threadpool(validate_json, json_schema, body, ("body",)), None
    if media == "multipart/form-data":
        return await read_upload(request, upload_schema, what=what)
    raise HTTPException(415, f"Content-Type {media or '(none)'!r} is not accepted; send {accepted}")


def upload_body_doc(json_schema: str, *, file_description: str, request_description: str) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route taking `json_schema` as JSON or a multipart upload."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{json_schema}"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": file_description},
                            "request": {"type": "string", "description": request_description},
                        },
                    }
                },
            },
        }
    }
