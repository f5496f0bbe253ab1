"""The /v1/videos job API, /v1/models and the probes, against a real Redis (app in-process).

A worker's side of a job is played by the job store (the same calls a worker makes), so these tests
check the API's answers at each stage without running a model; tests/e2e runs the real worker.
"""

from __future__ import annotations

import subprocess
import sys
import time

from rq import Queue

from tests.service.test_api_validation import assert_error, multipart


def create(client, **fields) -> dict:
    resp = client.post("/v1/videos", json={"prompt": "a red fox running through snow", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_create_returns_the_queued_video_object_with_resolved_settings(client, redis_client):
    video = create(client, seed=3, seconds="2", size="128x96", sparsity={"top_p": 0.8})
    assert video["object"] == "video" and video["status"] == "queued" and video["progress"] == 0
    assert video["id"].startswith("video_") and video["model"] == "tiny"
    assert video["size"] == "128x96" and (video["width"], video["height"]) == (128, 96)
    assert video["num_frames"] == 17 and video["fps"] == 8 and video["seconds"] == "2.125"
    assert video["seed"] == 3 and video["num_inference_steps"] == 4 and video["guidance_scale"] == 5.0
    assert video["sparsity"]["top_p"] == 0.8 and video["sparsity"]["preset"] == "balanced"
    assert video["created_at"] <= time.time() and video["completed_at"] is None and video["error"] is None
    assert Queue("tiny", connection=redis_client).job_ids == [video["id"]]
    fetched = client.get(f"/v1/videos/{video['id']}").json()
    assert fetched == video


def test_multipart_create_like_an_openai_sdk(client):
    body, ctype = multipart({"prompt": "a fox", "model": "tiny", "seconds": "1", "size": "64x64",
                             "sparsity": '{"preset": "fast", "max_density": 0.2}'})
    resp = client.post("/v1/videos", content=body, headers={"content-type": ctype})
    assert resp.status_code == 201, resp.text
    video = resp.json()
    assert video["num_frames"] == 9 and video["sparsity"]["preset"] == "fast"
    assert video["sparsity"]["max_density"] == 0.2
    resp = client.post("/v1/videos", data={"prompt": "a fox", "sparsity": "dense", "num_frames": "5"})
    assert resp.status_code == 201 and resp.json()["sparsity"]["mode"] == "dense"


def test_unknown_video_is_404_for_every_endpoint(client):
    for vid in ("video_" + "0" * 32, "not-an-id"):
        assert_error(client.get(f"/v1/videos/{vid}"), 404, "video_id", "no video")
        assert_error(client.delete(f"/v1/videos/{vid}"), 404, "video_id", "no video")
        assert_error(client.get(f"/v1/videos/{vid}/content"), 404, "video_id", "no video")


def test_list_pages_newest_first(client):
    ids = [create(client)["id"] for _ in range(5)]
    newest_first = ids[::-1]
    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/videos", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [v["id"] for v in page["data"]]
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == newest_first
    empty = client.get("/v1/videos", params={"after": ids[0]}).json()
    assert empty["data"] == [] and not empty["has_more"] and empty["first_id"] is None


def test_delete_cancels_a_queued_job_and_takes_it_off_the_queue(client, store, redis_client):
    video = create(client)
    resp = client.delete(f"/v1/videos/{video['id']}")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "cancelled" and body["deleted"] is True and body["completed_at"] is not None
    assert Queue("tiny", connection=redis_client).job_ids == []
    assert store.mark_started(video["id"], "w1") is None  # a worker that got it anyway must not run it
    assert client.get(f"/v1/videos/{video['id']}").json()["status"] == "cancelled"
    assert_error(client.get(f"/v1/videos/{video['id']}/content"), 409, "video_id", "cancelled")


def test_delete_of_a_running_job_requests_a_cooperative_stop(client, store):
    video = create(client)
    store.mark_started(video["id"], "w1")
    store.set_progress(video["id"], 1, 4, 0.2)
    running = client.get(f"/v1/videos/{video['id']}").json()
    assert running["status"] == "in_progress" and running["progress"] == 25
    assert running["metrics"]["step_seconds"] == [0.2] and running["started_at"] is not None
    body = client.delete(f"/v1/videos/{video['id']}").json()
    assert body["status"] == "in_progress" and body["cancel_requested"] is True
    assert store.is_cancel_requested(video["id"])
    store.mark_cancelled(video["id"])  # the worker stops between steps
    assert client.get(f"/v1/videos/{video['id']}").json()["status"] == "cancelled"


def test_content_is_409_until_completed_then_streams_the_mp4_then_410_after_delete(client, store):
    video = create(client)
    vid = video["id"]
    assert_error(client.get(f"/v1/videos/{vid}/content"), 409, "video_id", "queued")
    store.mark_started(vid, "w1")
    assert_error(client.get(f"/v1/videos/{vid}/content"), 409, "video_id", "in_progress")
    payload = bytes(range(256)) * 5000  # > one streaming chunk
    store.video_path(vid).write_bytes(payload)
    store.mark_completed(vid, {"encode_seconds": 0.01})
    done = client.get(f"/v1/videos/{vid}").json()
    assert done["status"] == "completed" and done["progress"] == 100 and done["expires_at"] > done["completed_at"]
    resp = client.get(f"/v1/videos/{vid}/content")
    assert resp.status_code == 200 and resp.headers["content-type"] == "video/mp4"
    assert resp.content == payload and int(resp.headers["content-length"]) == len(payload)
    assert_error(client.get(f"/v1/videos/{vid}/content", params={"variant": "thumbnail"}), 400, "variant", "video")
    after = client.delete(f"/v1/videos/{vid}").json()
    assert after["status"] == "completed" and not store.video_path(vid).exists()
    assert_error(client.get(f"/v1/videos/{vid}/content"), 410, "video_id", "deleted or has expired")


def test_failed_job_shows_its_error(client, store):
    vid = create(client)["id"]
    store.mark_started(vid, "w1")
    store.mark_failed(vid, "pipeline_error", "out of memory")
    video = client.get(f"/v1/videos/{vid}").json()
    assert video["status"] == "failed" and video["error"] == {"code": "pipeline_error", "message": "out of memory"}
    assert_error(client.get(f"/v1/videos/{vid}/content"), 409, "video_id", "failed")


def test_models_lists_limits_presets_and_live_workers(client, store):
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    by_id = {m["id"]: m for m in models["data"]}
    assert set(by_id) == {"tiny", "tiny-i2v", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "hunyuanvideo", "wan2.2-t2v-a14b",
                          "wan2.1-i2v-14b-720p", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"}
    tiny = by_id["tiny"]
    assert tiny["limits"]["max_frames"] == 17 and tiny["defaults"]["num_frames"] == 9
    assert tiny["default_preset"] == "balanced" and set(tiny["presets"]) >= {"dense", "quality", "balanced", "fast"}
    assert tiny["live_workers"] == 0 and "path" not in tiny
    store.heartbeat("w1", {"model": "tiny", "queues": ["tiny"]}, ttl_s=10)
    assert client.get("/v1/models/tiny").json()["live_workers"] == 1
    assert_error(client.get("/v1/models/sora"), 404, "model_id", "available models")


def test_readyz_needs_a_live_worker_and_healthz_does_not(client, store):
    assert client.get("/healthz").json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.json()["status"] == "no_workers" and resp.json()["redis"] == "ok"
    store.heartbeat("w1", {"model": "tiny", "queues": ["tiny"], "state": "warming"}, ttl_s=10)
    resp = client.get("/readyz")
    assert resp.status_code == 200 and [w["name"] for w in resp.json()["workers"]] == ["w1"]
    assert resp.json()["serving"] == 0  # alive, jobs queue, but none runs until its warm-up ends
    store.heartbeat("w1", {"model": "tiny", "queues": ["tiny"], "state": "idle"}, ttl_s=10)
    assert client.get("/readyz").json()["serving"] == 1


def test_readyz_reports_redis_down(output_dir):
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    settings = Settings(redis_url="redis://127.0.0.1:1/0", output_dir=output_dir, maintenance_interval_s=0)
    with TestClient(create_app(settings)) as c:
        resp = c.get("/readyz")
        assert resp.status_code == 503 and resp.json()["status"] == "unavailable"
        # Auth on: the key lookup itself meets the dead Redis and answers 503 (not 401, not a bare 500).
        resp = c.post("/v1/videos", json={"prompt": "x"}, headers={"Authorization": "Bearer svg2_x"})
        assert_error(resp, 503, None, "Redis")
        assert resp.json()["error"]["code"] == "unavailable" and resp.headers["retry-after"]
        assert c.get("/healthz").status_code == 200


def test_openapi_documents_both_body_encodings(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert "prompt" in content["application/json"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200


def test_the_api_never_imports_torch():
    code = "import sys, service.main; service.main.create_app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_settings_come_from_the_environment_when_the_app_is_built(monkeypatch, tmp_path):
    from service.config import Settings

    monkeypatch.setenv("SVG2_PORT", "9123")
    monkeypatch.setenv("SVG2_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SVG2_MAX_BODY_BYTES", "2048")
    s = Settings()
    assert s.port == 9123 and s.output_dir == tmp_path / "out" and s.max_body_bytes == 2048


def test_metrics_endpoint_counts_requests_and_reads_the_queues(client):
    create(client)
    client.post("/v1/videos", json={"prompt": "x", "num_frames": 10})
    text = client.get("/metrics").text
    assert 'svg2_http_requests_total{code="201",method="POST",route="/v1/videos"} 1.0' in text
    assert 'svg2_http_requests_total{code="400",method="POST",route="/v1/videos"} 1.0' in text
    assert "svg2_queue" in text  # read from Redis at scrape time
