"""The whole service over HTTP: uvicorn API + svg2-worker processes + Redis, tiny model on CPU."""

from __future__ import annotations

import io
import time

import av
import httpx

POLL_S = 0.02


def create(api, **body) -> dict:
    body.setdefault("model", "tiny")
    body.setdefault("prompt", "a paper boat drifting down a rainy street")
    response = httpx.post(f"{api.base_url}/v1/videos", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def get(api, video_id: str) -> dict:
    response = httpx.get(f"{api.base_url}/v1/videos/{video_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(api, video_id: str, done, timeout_s: float = 120.0) -> dict:
    """Poll the job until ``done(video)`` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        video = get(api, video_id)
        if done(video):
            return video
        time.sleep(POLL_S)
    raise AssertionError(f"{video_id} did not get there within {timeout_s} s: {get(api, video_id)}")


def finished(video: dict) -> bool:
    return video["status"] in ("completed", "failed", "cancelled")


def download_and_decode(api, video_id: str) -> tuple[int, int, int, float]:
    response = httpx.get(f"{api.base_url}/v1/videos/{video_id}/content", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return frames, stream.codec_context.width, stream.codec_context.height, float(stream.average_rate)


def test_job_posted_over_http_completes_with_the_requested_video(api_server, start_worker):
    worker = start_worker()
    worker.wait_for("idle")

    video = create(api_server, size="96x64", num_frames=13, fps=12, num_inference_steps=3, seed=7)
    assert video["status"] == "queued"
    done = wait_until(api_server, video["id"], finished)

    assert done["status"] == "completed", done
    assert done["progress"] == 100 and done["error"] is None
    assert download_and_decode(api_server, video["id"]) == (13, 96, 64, 12.0)
    metrics = done["metrics"]
    assert len(metrics["step_seconds"]) == 3
    assert metrics["worker"] == worker.name and metrics["attention"] == "svg2"  # the default preset is sparse
    assert 0 < metrics["sparsity"]["mean_density_sparse"] <= 1
    assert metrics["queue_wait_seconds"] >= 0 and metrics["run_seconds"] >= metrics["denoise_seconds"] > 0
    assert (metrics["frames"], metrics["width"], metrics["height"]) == (13, 96, 64)


def test_cancel_a_queued_and_a_running_job(api_server, start_worker):
    worker = start_worker()
    worker.wait_for("idle")

    # The largest, longest tiny job keeps the single worker busy for many steps.
    running = create(api_server, size="128x128", num_frames=17, num_inference_steps=20)
    wait_until(api_server, running["id"], lambda v: v["status"] == "in_progress" and v["progress"] > 0)
    queued = create(api_server, num_frames=5, num_inference_steps=2)

    cancelled = httpx.delete(f"{api_server.base_url}/v1/videos/{queued['id']}", timeout=10).json()
    assert cancelled["status"] == "cancelled"
    stopping = httpx.delete(f"{api_server.base_url}/v1/videos/{running['id']}", timeout=10).json()
    assert stopping["status"] == "in_progress" and stopping["cancel_requested"] is True

    stopped = wait_until(api_server, running["id"], finished)
    assert stopped["status"] == "cancelled" and stopped["error"] is None
    assert 1 <= len(stopped["metrics"]["step_seconds"]) < 20  # stopped between denoising steps
    assert httpx.get(f"{api_server.base_url}/v1/videos/{running['id']}/content", timeout=10).status_code == 409

    # The worker goes on: the cancelled queued job is skipped, the next one completes.
    after = create(api_server, num_frames=5, num_inference_steps=2)
    assert wait_until(api_server, after["id"], finished)["status"] == "completed"
    never_ran = get(api_server, queued["id"])
    assert never_ran["status"] == "cancelled" and never_ran["started_at"] is None
    assert sorted(p.name for p in api_server.output_dir.iterdir()) == [f"{after['id']}.mp4"]


def test_a_new_worker_takes_over_after_the_old_one_is_killed(api_server, start_worker):
    first = start_worker()
    first.wait_for("idle")
    one = create(api_server, num_frames=5, num_inference_steps=2)
    assert wait_until(api_server, one["id"], finished)["metrics"]["worker"] == first.name

    first.kill()  # a crash between jobs: no cleanup runs
    waiting = create(api_server, size="64x48", num_frames=9, num_inference_steps=2, seed=3)
    time.sleep(0.5)
    assert get(api_server, waiting["id"])["status"] == "queued"  # nobody serves the queue now

    second = start_worker()
    second.wait_for("idle")
    done = wait_until(api_server, waiting["id"], finished)
    assert done["status"] == "completed" and done["metrics"]["worker"] == second.name
    assert download_and_decode(api_server, waiting["id"])[:3] == (9, 64, 48)


def test_image_to_video_job_over_http_uploads_its_first_frame_and_completes(api_server, start_worker):
    from PIL import Image

    frame = io.BytesIO()
    Image.new("RGB", (160, 90), (200, 40, 40)).save(frame, format="PNG")
    worker = start_worker(SVG2_MODEL="tiny-i2v")
    worker.wait_for("idle")
    response = httpx.post(f"{api_server.base_url}/v1/videos", timeout=10,
                          data={"model": "tiny-i2v", "prompt": "a red wall", "size": "96x64", "num_frames": "5",
                                "num_inference_steps": "2", "seed": "5"},
                          files={"input_reference": ("wall.png", frame.getvalue(), "image/png")})
    assert response.status_code == 201, response.text
    video_id = response.json()["id"]
    assert (api_server.output_dir / f"{video_id}.input.png").exists()
    done = wait_until(api_server, video_id, finished)
    assert done["status"] == "completed", done
    assert download_and_decode(api_server, video_id) == (5, 96, 64, 8.0)
    assert done["metrics"]["attention"] == "svg2" and done["metrics"]["model"] == "tiny-i2v"
    httpx.delete(f"{api_server.base_url}/v1/videos/{video_id}", timeout=10)
    assert not list(api_server.output_dir.glob(f"{video_id}*"))  # the MP4 and the first frame
