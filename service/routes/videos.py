"""``/v1/videos``: create, read, list, cancel a video job and download its MP4."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.deps import ContextDep, RegistryDep, SettingsDep, StoreDep
from service.errors import APIError, validation_error_to_api_error
from service.schemas import VideoCreate, VideoDeletedPublic, VideoList, VideoPublic
from worker.store import JobRecord, JobStore

router = APIRouter(prefix="/v1/videos", tags=["videos"])

CHUNK_BYTES = 1 << 20

_create_schema = VideoCreate.model_json_schema(ref_template="#/components/schemas/{model}")
_create_body = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _create_schema},
            "multipart/form-data": {"schema": _create_schema},
        },
    }
}


async def _read_create_body(request: Request) -> dict[str, Any]:
    """The request's fields as a dict, from JSON or a form (what OpenAI-style SDKs send)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise APIError(400, "invalid_json", "request body must be a JSON object")
        return data
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form()
        data: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                raise APIError(400, "unsupported_parameter", f"{key}: file uploads are not supported", key)
            if key in data:
                raise APIError(400, "invalid_value", f"{key}: given more than once", key)
            data[key] = value
        # A form carries strings: sparsity is a preset name or a JSON object.
        sparsity = data.get("sparsity")
        if isinstance(sparsity, str) and sparsity.lstrip().startswith("{"):
            try:
                data["sparsity"] = json.loads(sparsity)
            except json.JSONDecodeError as exc:
                raise APIError(400, "invalid_value", f"sparsity: not a valid JSON object: {exc}", "sparsity") from None
        return data
    raise APIError(415, "unsupported_media_type",
                   "send application/json or multipart/form-data (got " + (ctype or "no content type") + ")")


@router.post("", status_code=201, response_model=VideoPublic, openapi_extra=_create_body,
             summary="Create a video job")
async def create_video(request: Request, response: Response, store: StoreDep, registry: RegistryDep) -> VideoPublic:
    data = await _read_create_body(request)
    try:
        body = VideoCreate.model_validate(data)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc, from_request=False) from None
    spec, entry = body.to_job_spec(registry)
    record = await run_in_threadpool(store.create, spec, entry.queue)  # blocking Redis I/O off the loop
    response.headers["Location"] = f"/v1/videos/{record.id}"
    return VideoPublic.from_record(record)


@router.get("", response_model=VideoList, summary="List video jobs (newest first by default)")
def list_videos(
    store: StoreDep,
    settings: SettingsDep,
    after: Annotated[str | None, Query(description="Id of the last job of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, description="Page size.")] = 20,
    order: Annotated[Literal["desc", "asc"], Query(description="desc: newest first (default).")] = "desc",
) -> VideoList:
    if limit > settings.list_max_limit:
        raise APIError(400, "invalid_value", f"limit: must be at most {settings.list_max_limit}", "limit")
    try:
        records, has_more = store.list(after, limit, order)
    except KeyError:
        raise APIError(400, "invalid_value", f"after: unknown video id {after!r}", "after") from None
    data = [VideoPublic.from_record(r) for r in records]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


def _get_or_404(store: JobStore, video_id: str) -> JobRecord:
    record = store.get(video_id)
    if record is None:
        raise APIError(404, "video_not_found", f"no video with id {video_id!r}", "video_id")
    return record


@router.get("/{video_id}", response_model=VideoPublic, summary="Get a video job")
def get_video(video_id: str, store: StoreDep) -> VideoPublic:
    return VideoPublic.from_record(_get_or_404(store, video_id))


@router.delete("/{video_id}", response_model=VideoDeletedPublic, summary="Cancel a video job and delete its MP4")
def delete_video(video_id: str, store: StoreDep, ctx: ContextDep) -> VideoDeletedPublic:
    """A queued job is cancelled at once; a running job stops between denoising steps (``status``
    stays ``in_progress`` with ``cancel_requested`` until the worker stops); the MP4 is removed."""
    _get_or_404(store, video_id)
    requested_at = time.time()
    record = store.request_cancel(video_id)
    ctx.metrics.observe_cancel(record, requested_at)  # counts a job cancelled while queued, once
    if record is None:
        raise APIError(404, "video_not_found", f"no video with id {video_id!r}", "video_id")
    return VideoDeletedPublic(**VideoPublic.from_record(record).model_dump())


@router.get("/{video_id}/content", response_class=StreamingResponse, summary="Download the MP4",
            responses={200: {"content": {"video/mp4": {}}, "description": "The video."},
                       404: {"description": "Unknown video."}, 409: {"description": "Not completed."},
                       410: {"description": "Deleted or expired."}})
def get_video_content(
    video_id: str,
    store: StoreDep,
    variant: Annotated[str, Query(description="Only 'video' is available.")] = "video",
) -> StreamingResponse:
    if variant != "video":
        raise APIError(400, "invalid_value", f"variant: only 'video' is available, got {variant!r}", "variant")
    record = _get_or_404(store, video_id)
    if record.status != "completed":
        raise APIError(409, "video_not_ready", f"video {video_id} is {record.status}, not completed", "video_id")
    if record.expires_at is not None and record.expires_at <= time.time():
        store.delete_video(video_id)
        raise APIError(410, "video_expired", f"the MP4 of video {video_id} was deleted or has expired", "video_id")
    try:
        # Opened here, not in the response: a delete racing the download cannot turn into a 500.
        handle = open(store.video_path(video_id), "rb")  # noqa: SIM115 (closed by the iterator)
    except FileNotFoundError:
        raise APIError(410, "video_expired", f"the MP4 of video {video_id} was deleted or has expired",
                       "video_id") from None
    size = os.fstat(handle.fileno()).st_size

    def chunks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(CHUNK_BYTES):
                yield block

    return StreamingResponse(chunks(), media_type="video/mp4", headers={
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{video_id}.mp4"',
    })
