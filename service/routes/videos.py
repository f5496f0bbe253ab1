"""``/v1/videos``: create, read, list, cancel a video job and download its MP4."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.auth import Principal, PrincipalDep
from service.config import Settings
from service.deps import ContextDep, RegistryDep, SettingsDep, StoreDep
from service.errors import APIError, validation_error_to_api_error
from service.schemas import VideoCreate, VideoDeletedPublic, VideoList, VideoPublic
from worker.images import FIELD as INPUT_FIELD
from worker.images import decode_data_url, decode_input_image
from worker.spec import JobSpec
from worker.store import IdempotencyConflict, JobRecord, JobStore, new_job_id

router = APIRouter(prefix="/v1/videos", tags=["videos"])

CHUNK_BYTES = 1 << 20
MAX_IDEMPOTENCY_KEY_CHARS = 255
#: Retry-After of a 429 for a full queue: a video takes minutes, so retrying sooner is pointless.
QUEUE_FULL_RETRY_AFTER_S = 30

_create_schema = VideoCreate.model_json_schema(ref_template="#/components/schemas/{model}")
_INPUT_DOC = ("The video's first frame, a PNG, JPEG or WebP image, center-cropped to the video's aspect ratio and resized "
              "to its size: required by models of task i2v, optional for ti2v, refused by t2v (GET /v1/models).")


def _with_input(schema: dict, prop: dict) -> dict:
    return {**schema, "properties": {**schema["properties"], INPUT_FIELD: {**prop, "description": _INPUT_DOC}}}


_create_body = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _with_input(_create_schema, {
                "type": "string", "pattern": "^data:image/(png|jpeg|webp);base64,"})},
            "multipart/form-data": {"schema": _with_input(_create_schema, {"type": "string", "format": "binary"})},
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
                if key != INPUT_FIELD:
                    raise APIError(400, "unsupported_parameter", f"{key}: file uploads are not supported (only "
                                   f"{INPUT_FIELD})", key)
                value = await value.read()
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
             summary="Create a video job",
             responses={200: {"model": VideoPublic, "description": "Replay of an earlier request with the same "
                              "Idempotency-Key and body: the job it created."},
                        409: {"description": "Idempotency-Key reused with another body."},
                        429: {"description": "Rate limit or queue cap reached (see Retry-After)."}})
async def create_video(
    request: Request,
    response: Response,
    store: StoreDep,
    registry: RegistryDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[str | None, Header(
        description="Makes the create safe to retry: the same key with the same body returns the same job "
        "(200); with another body, 409. Remembered for SVG2_IDEMPOTENCY_TTL_S (default 24 h).")] = None,
) -> VideoPublic:
    data = await _read_create_body(request)
    fields = {k: v for k, v in data.items() if k != INPUT_FIELD}
    try:
        body = VideoCreate.model_validate(fields)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc, from_request=False) from None
    png = input_image = None
    if data.get(INPUT_FIELD) is not None:
        raw = data[INPUT_FIELD]
        raw = raw if isinstance(raw, bytes) else decode_data_url(raw)
        # decoding an image is CPU work: off the event loop
        png, input_image = await run_in_threadpool(decode_input_image, raw, settings.max_input_image_bytes,
                                                   settings.max_input_image_pixels)
        # the idempotency hash covers the image by its digest (the body as sent, less the bytes)
        data = {**data, INPUT_FIELD: "sha256:" + hashlib.sha256(raw).hexdigest()}
    spec, entry = body.to_job_spec(registry, input_image=input_image)
    # Blocking Redis I/O off the event loop.
    record, created = await run_in_threadpool(_create, store, settings, principal, spec, entry.queue, data,
                                              idempotency_key, png)
    response.headers["Location"] = f"/v1/videos/{record.id}"
    if not created:
        response.status_code = 200
    return VideoPublic.from_record(record)


def _create(store: JobStore, settings: Settings, principal: Principal, spec: JobSpec, queue: str,
            data: dict[str, Any], idempotency_key: str | None, input_png: bytes | None = None,
            ) -> tuple[JobRecord, bool]:
    """Create the job (after the caps), or return the one an earlier request with the same
    Idempotency-Key created. Returns (record, created). ``input_png``: the job's first frame, written beside
    its MP4 before the job is queued (and removed again if the create fails)."""
    job_id = None
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise APIError(400, "invalid_value",
                           f"Idempotency-Key: must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters", "Idempotency-Key")
        # The request as sent (not the resolved spec: an unset seed is drawn at random per request).
        body_sha = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
        try:
            job_id, new = store.reserve_idempotency_key(principal.key_id, idempotency_key, body_sha,
                                                        settings.idempotency_ttl_s)
        except IdempotencyConflict as exc:
            raise APIError(409, "idempotency_key_reused",
                           f"Idempotency-Key was used for another request body (job {exc.job_id})",
                           "Idempotency-Key") from None
        if not new:
            record = store.get(job_id)
            if record is None:  # the first request is still creating it (or failed to)
                raise APIError(409, "idempotency_key_in_use", "a request with this Idempotency-Key is in progress",
                               "Idempotency-Key", headers={"Retry-After": "1"})
            return record, False
    try:
        total, mine = store.queued_counts(principal.key_id)
        if mine >= settings.max_queued_per_key:
            raise APIError(429, "too_many_queued_jobs",
                           f"this API key has {mine} jobs queued (limit {settings.max_queued_per_key})",
                           headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})
        if total >= settings.max_queued_total:
            raise APIError(429, "queue_full", f"{total} jobs are queued (limit {settings.max_queued_total})",
                           headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)})
        if input_png is not None:
            job_id = job_id or new_job_id()
            store.save_input_image(job_id, input_png)
        return store.create(spec, queue, owner=principal.key_id, job_id=job_id), True
    except BaseException:
        if input_png is not None and job_id is not None:
            store.input_path(job_id).unlink(missing_ok=True)
        if idempotency_key is not None:
            store.release_idempotency_key(principal.key_id, idempotency_key)
        raise


@router.get("", response_model=VideoList, summary="List video jobs (newest first by default)")
def list_videos(
    store: StoreDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(description="Id of the last job of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, description="Page size.")] = 20,
    order: Annotated[Literal["desc", "asc"], Query(description="desc: newest first (default).")] = "desc",
) -> VideoList:
    if limit > settings.list_max_limit:
        raise APIError(400, "invalid_value", f"limit: must be at most {settings.list_max_limit}", "limit")
    try:
        records, has_more = store.list(after, limit, order, owner=None if principal.admin else principal.key_id)
    except KeyError:
        raise APIError(400, "invalid_value", f"after: unknown video id {after!r}", "after") from None
    data = [VideoPublic.from_record(r) for r in records]
    return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=has_more)


def _get_or_404(store: JobStore, video_id: str, principal: Principal) -> JobRecord:
    """The job, if it exists and the caller may see it; another key's job reads as unknown."""
    record = store.get(video_id)
    if record is None or not principal.may_see(record.owner):
        raise APIError(404, "video_not_found", f"no video with id {video_id!r}", "video_id")
    return record


@router.get("/{video_id}", response_model=VideoPublic, summary="Get a video job")
async def get_video(video_id: str, store: StoreDep, principal: PrincipalDep, ctx: ContextDep) -> Response:
    # The hot polling path: async Redis (no threadpool hop) and serialized once here (returning the
    # model would make FastAPI validate and serialize it again); the schema comes from response_model.
    record = await store.aget(ctx.aredis, video_id)
    if record is None or not principal.may_see(record.owner):
        raise APIError(404, "video_not_found", f"no video with id {video_id!r}", "video_id")
    return Response(content=VideoPublic.from_record(record).model_dump_json(), media_type="application/json")


@router.delete("/{video_id}", response_model=VideoDeletedPublic, summary="Cancel a video job and delete its MP4")
def delete_video(video_id: str, store: StoreDep, ctx: ContextDep, principal: PrincipalDep) -> VideoDeletedPublic:
    """A queued job is cancelled at once; a running job stops between denoising steps (``status``
    stays ``in_progress`` with ``cancel_requested`` until the worker stops); the MP4 is removed."""
    _get_or_404(store, video_id, principal)
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
    principal: PrincipalDep,
    variant: Annotated[str, Query(description="Only 'video' is available.")] = "video",
) -> StreamingResponse:
    if variant != "video":
        raise APIError(400, "invalid_value", f"variant: only 'video' is available, got {variant!r}", "variant")
    record = _get_or_404(store, video_id, principal)
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
