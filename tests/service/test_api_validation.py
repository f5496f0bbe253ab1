"""Every rejected request gets a 4xx whose body names the field and the rule; nothing gives a 5xx."""

from __future__ import annotations

import json
import uuid

import pytest
from rq import Queue

TOO_LONG = "x" * 2001

# (id, fields, param the error must name, words the message must contain)
INVALID = [
    ("prompt-missing", {}, "prompt", "required"),
    ("prompt-empty", {"prompt": "   "}, "prompt", "non-empty"),
    ("prompt-too-long", {"prompt": TOO_LONG}, "prompt", "2000"),
    ("negative-prompt-too-long", {"negative_prompt": TOO_LONG}, "negative_prompt", "2000"),
    ("unknown-field", {"input_reference_url": "x"}, "input_reference_url", "unknown field"),
    ("unknown-model", {"model": "sora-2"}, "model", "available models: tiny"),
    ("size-not-multiple-of-16", {"size": "64x72"}, "size", "multiples of 16"),
    ("size-malformed", {"size": "big"}, "size", "WIDTHxHEIGHT"),
    ("size-over-limit", {"size": "256x64"}, "size", "between 16 and 128"),
    ("size-and-width", {"size": "64x64", "width": 64}, "size", "not both"),
    ("width-not-multiple", {"width": 40}, "width", "multiples of 16"),
    ("height-over-limit", {"height": 1024}, "height", "between 16 and 128"),
    ("frames-not-4k+1", {"num_frames": 10}, "num_frames", "4k+1"),
    ("frames-over-limit", {"num_frames": 21}, "num_frames", "between 1 and 17"),
    ("frames-fraction", {"num_frames": "9.5"}, "num_frames", "integer"),
    ("seconds-too-long", {"seconds": "12"}, "seconds", "at most"),
    ("seconds-absurd", {"seconds": "1e308"}, "seconds", "at most"),
    ("seconds-negative", {"seconds": "-1"}, "seconds", "positive"),
    ("seconds-not-number", {"seconds": "four"}, "seconds", "number"),
    ("seconds-and-frames", {"seconds": "1", "num_frames": 9}, "seconds", "not both"),
    ("fps-zero", {"fps": 0}, "fps", "between 1 and 30"),
    ("fps-over", {"fps": 61}, "fps", "between 1 and 30"),
    ("steps-zero", {"num_inference_steps": 0}, "num_inference_steps", "between 1 and 100"),
    ("steps-over", {"num_inference_steps": 101}, "num_inference_steps", "between 1 and 100"),
    ("guidance-negative", {"guidance_scale": -1}, "guidance_scale", "between 0.0 and 20.0"),
    ("guidance-over", {"guidance_scale": 21}, "guidance_scale", "between 0.0 and 20.0"),
    ("seed-negative", {"seed": -1}, "seed", "between 0"),
    ("sparsity-unknown-preset", {"sparsity": "turbo"}, "sparsity.preset", "known presets"),
    ("sparsity-top-p-zero", {"sparsity": {"top_p": 0}}, "sparsity.top_p", "greater than 0"),
    ("sparsity-top-p-over", {"sparsity": {"top_p": 1.5}}, "sparsity.top_p", "less than or equal to 1"),
    ("sparsity-density-order", {"sparsity": {"min_density": 0.5, "max_density": 0.2}}, "sparsity.min_density",
     "must not exceed"),
    ("sparsity-max-density", {"sparsity": {"max_density": 0}}, "sparsity.max_density", "greater than 0"),
    ("sparsity-q-clusters", {"sparsity": {"num_q_clusters": 0}}, "sparsity.num_q_clusters", "greater than or equal"),
    ("sparsity-k-clusters", {"sparsity": {"num_k_clusters": 100000}}, "sparsity.num_k_clusters", "less than"),
    ("sparsity-warmup-steps", {"sparsity": {"dense_warmup_steps": -1}}, "sparsity.dense_warmup_steps",
     "greater than or equal"),
    ("sparsity-dense-layers", {"sparsity": {"dense_layers": -2}}, "sparsity.dense_layers", "greater than or equal"),
    ("sparsity-mode", {"sparsity": {"mode": "magic"}}, "sparsity.mode", "top_p"),
    ("sparsity-unknown-field", {"sparsity": {"topp": 0.9}}, "sparsity.topp", "unknown field"),
    ("sparsity-preset-in-object", {"sparsity": {"preset": "turbo", "top_p": 0.5}}, "sparsity.preset", "known presets"),
]


def _with_prompt(fields: dict) -> dict:
    return fields if "prompt" in fields or not fields else {"prompt": "a fox", **fields}


def multipart(fields: dict) -> tuple[bytes, str]:
    """A multipart/form-data body of plain text fields (what OpenAI-style SDKs send)."""
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{text}\r\n')
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def assert_error(resp, status: int, param: str | None, words: str = "") -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error") and err["code"]
    assert words.lower() in err["message"].lower(), err["message"]
    return err


@pytest.mark.parametrize(("fields", "param", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_json_requests_breaking_a_rule_get_400_naming_the_field(client, redis_client, fields, param, words):
    resp = client.post("/v1/videos", json=_with_prompt(fields))
    assert_error(resp, 400, param, words)
    assert Queue("tiny", connection=redis_client).count == 0  # nothing was enqueued


@pytest.mark.parametrize(("fields", "param", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_multipart_requests_breaking_a_rule_get_400_naming_the_field(client, fields, param, words):
    body, ctype = multipart(_with_prompt(fields))
    resp = client.post("/v1/videos", content=body, headers={"content-type": ctype})
    assert_error(resp, 400, param, words)


def test_json_type_errors_name_the_field(client):
    assert_error(client.post("/v1/videos", json={"prompt": 5}), 400, "prompt", "string")
    assert_error(client.post("/v1/videos", json={"prompt": "x", "seconds": [4]}), 400, "seconds", "number")
    assert_error(client.post("/v1/videos", json={"prompt": "x", "sparsity": 3}), 400, "sparsity", "preset name")
    for raw in (b'{"prompt": "x", "guidance_scale": Infinity}', b'{"prompt": "x", "guidance_scale": NaN}'):
        resp = client.post("/v1/videos", content=raw, headers={"content-type": "application/json"})
        assert_error(resp, 400, "guidance_scale", "finite")


def test_malformed_bodies_are_rejected(client):
    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/videos", content=b"{not json", headers=headers), 400, None, "not valid JSON")
    assert_error(client.post("/v1/videos", content=b"[1, 2]", headers=headers), 400, None, "JSON object")
    assert_error(client.post("/v1/videos", content=b"prompt", headers={"content-type": "text/plain"}), 415, None,
                 "multipart/form-data")
    body, ctype = multipart({"prompt": "x", "sparsity": "{broken"})
    assert_error(client.post("/v1/videos", content=body, headers={"content-type": ctype}), 400, "sparsity", "JSON")


def test_file_uploads_other_than_input_reference_are_refused_by_name(client):
    resp = client.post("/v1/videos", data={"prompt": "x"}, files={"image": ("a.png", b"\x89PNG", "image/png")})
    assert_error(resp, 400, "image", "only input_reference")
    resp = client.post("/v1/videos", data={"prompt": "x", "model": "tiny-i2v"},
                       files={"input_reference": ("a.png", b"\x89PNG", "image/png")})
    assert_error(resp, 400, "input_reference", "not a readable")


def test_oversized_body_gets_413(client):
    resp = client.post("/v1/videos", json={"prompt": "x" * 70_000})
    assert_error(resp, 413, None, "larger than 65536 bytes")


def test_oversized_chunked_body_without_content_length_gets_413(client):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    resp = client.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
    assert_error(resp, 413, None, "larger than")


def test_query_parameters_are_validated(client):
    assert_error(client.get("/v1/videos", params={"limit": 0}), 400, "limit", "greater than or equal to 1")
    assert_error(client.get("/v1/videos", params={"limit": 101}), 400, "limit", "at most 100")
    assert_error(client.get("/v1/videos", params={"limit": "ten"}), 400, "limit", "integer")
    assert_error(client.get("/v1/videos", params={"after": "video_" + "0" * 32}), 400, "after", "unknown")
    assert_error(client.get("/v1/videos", params={"order": "newest"}), 400, "order", "desc")


ODD_VALUES = [None, "", "   ", -1, 0, 10**30, 1.5, "1e999", "NaN", True, [], {}, [1], {"a": 1}, "\x00"]
FIELDS = ["prompt", "model", "seconds", "num_frames", "size", "width", "height", "fps", "seed",
          "num_inference_steps", "guidance_scale", "negative_prompt", "sparsity"]


def test_no_field_value_produces_a_server_error(client):
    """Odd values in every field: each answer is a 201 or a 4xx with the error shape, never a 5xx."""
    for field in FIELDS:
        for value in ODD_VALUES:
            body = {"prompt": "a fox", field: value}
            resp = client.post("/v1/videos", json=body)
            assert resp.status_code < 500, (body, resp.text)
            if resp.status_code >= 400:
                assert "error" in resp.json(), (body, resp.text)
    for value in ODD_VALUES[:12]:
        body = {"prompt": "a fox", "sparsity": {"top_p": value, "num_q_clusters": value}}
        resp = client.post("/v1/videos", json=body)
        assert resp.status_code < 500, (body, resp.text)
