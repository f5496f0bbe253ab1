"""Existing OpenAI-style clients work: the official ``openai`` SDK against the real API server."""

from __future__ import annotations

import pytest

from worker.store import JobStore

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


@pytest.fixture
def sdk(api_server):
    with openai.OpenAI(base_url=f"{api_server.base_url}/v1", api_key="unused", max_retries=0, timeout=10) as c:
        yield c


def test_sdk_create_retrieve_list_download_delete(sdk, api_server, redis_client):
    video = sdk.videos.create(model="tiny", prompt="a paper boat on a pond", seconds="1", size="64x64",
                              extra_body={"num_inference_steps": 2, "sparsity": "fast"})  # sent as multipart
    assert video.id.startswith("video_") and video.status == "queued" and video.size == "64x64"
    assert video.seconds == "1.125" and video.model == "tiny"
    extra = video.model_extra or {}
    assert extra["num_inference_steps"] == 2 and extra["sparsity"]["preset"] == "fast"

    second = sdk.videos.create(model="tiny", prompt="a second one", seconds="1", size="64x64")
    page = sdk.videos.list(limit=1)
    assert [v.id for v in page.data] == [second.id] and page.has_more
    assert [v.id for v in page.get_next_page().data] == [video.id]
    assert [v.id for v in sdk.videos.list(order="asc").data] == [video.id, second.id]

    # Play the worker's part through the job store, on the server's output directory.
    store = JobStore(redis_client, api_server.output_dir)
    store.mark_started(video.id, "w1")
    store.video_path(video.id).write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    store.mark_completed(video.id, {})
    done = sdk.videos.retrieve(video.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at is not None
    assert sdk.videos.download_content(video.id).content.startswith(b"\x00\x00\x00\x18ftyp")

    deleted = sdk.videos.delete(second.id)
    assert deleted.id == second.id and deleted.deleted is True
    assert sdk.videos.retrieve(second.id).status == "cancelled"


def test_sdk_sees_errors_with_the_field_named(sdk):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.videos.create(model="tiny", prompt="x", seconds="8", size="720x1280")
    body = err.value.body
    assert body["param"] == "size" and "between 16 and 128" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        sdk.videos.create(model="sora-2", prompt="x")
    assert err.value.body["param"] == "model" and "tiny" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve("video_" + "0" * 32)
