"""``input_reference``: the first frame of an image-to-video job, over the API (app in-process, real Redis); the
worker's side runs in tests/e2e."""

from __future__ import annotations

import base64
import hashlib
import io

from PIL import Image

from tests.service.test_api_validation import assert_error
from worker.images import synthetic_image
from worker.store import JobStore


def jpeg(width: int = 96, height: int = 64, angle: int = 0) -> bytes:
    out = io.BytesIO()
    synthetic_image(width, height).rotate(angle).save(out, format="JPEG", quality=90)
    return out.getvalue()


def post_file(client, image: bytes, headers: dict | None = None, **fields):
    fields = {"prompt": "the boat sails off", "model": "tiny-i2v", **fields}
    return client.post("/v1/videos", data=fields, files={"input_reference": ("frame.jpg", image, "image/jpeg")},
                       headers=headers or {})


def test_multipart_upload_stores_the_first_frame_beside_the_job(client, api_settings, redis_client):
    resp = post_file(client, jpeg(), size="64x48", num_frames="5")
    assert resp.status_code == 201, resp.text
    video = resp.json()
    assert video["model"] == "tiny-i2v" and video["size"] == "64x48" and video["status"] == "queued"
    store = JobStore(redis_client, api_settings.output_dir)
    spec = store.get(video["id"]).spec
    png = store.input_path(video["id"]).read_bytes()
    assert spec.input_image.sha256 == hashlib.sha256(png).hexdigest()
    assert (spec.input_image.width, spec.input_image.height, spec.input_image.source_format) == (96, 64, "jpeg")
    assert Image.open(io.BytesIO(png)).format == "PNG"
    assert video["input_reference"] == spec.input_image.model_dump()  # what the job got, shown on the video
    assert client.post("/v1/videos", json={"prompt": "x"}).json()["input_reference"] is None

    deleted = client.delete(f"/v1/videos/{video['id']}").json()  # cancelled while queued: the image goes too
    assert deleted["status"] == "cancelled" and not store.input_path(video["id"]).exists()


def test_json_takes_a_base64_data_url(client, api_settings, redis_client):
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg()).decode()
    resp = client.post("/v1/videos", json={"prompt": "x", "model": "tiny-i2v", "input_reference": url})
    assert resp.status_code == 201, resp.text
    store = JobStore(redis_client, api_settings.output_dir)
    assert store.input_path(resp.json()["id"]).exists()
    resp = client.post("/v1/videos", json={"prompt": "x", "model": "tiny-i2v",
                                           "input_reference": "https://example.com/frame.png"})
    assert_error(resp, 400, "input_reference", "not fetched")


def test_the_models_task_decides_whether_an_image_is_required_or_refused(client, api_settings):
    assert_error(post_file(client, jpeg(), model="tiny"), 400, "input_reference", "text-to-video")
    assert_error(client.post("/v1/videos", json={"prompt": "x", "model": "tiny-i2v"}), 400, "input_reference",
                 "required")
    assert not list(api_settings.output_dir.iterdir())  # nothing written for a refused request
    tasks = {m["id"]: m["task"] for m in client.get("/v1/models").json()["data"]}
    assert tasks["tiny"] == "t2v" and tasks["tiny-i2v"] == "i2v"


def test_image_limits(client, api_settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    assert_error(post_file(client, jpeg(8, 64)), 400, "input_reference", "at least 16 pixels")
    assert post_file(client, jpeg(2000, 2000)).status_code == 413  # over the fixtures' 64 KiB body limit
    image = jpeg(200, 100)
    tight = api_settings.model_copy(update={"max_input_image_bytes": len(image) - 1, "max_input_image_pixels": 10_000})
    with TestClient(create_app(tight)) as c:
        assert_error(post_file(c, image), 400, "input_reference", f"at most {len(image) - 1} bytes")
        assert_error(post_file(c, jpeg(120, 100)), 400, "input_reference", "at most 10000 pixels")


def test_an_idempotent_retry_sends_the_same_image(client):
    headers = {"Idempotency-Key": "frame-1"}
    first = post_file(client, jpeg(), headers)
    assert first.status_code == 201, first.text
    again = post_file(client, jpeg(), headers)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = post_file(client, jpeg(angle=90), headers)
    assert_error(other, 409, "Idempotency-Key", "another request body")
