"""``svg2 generate``: offline generation to an MP4, with the registry's rules."""

from __future__ import annotations

import json

import av

from worker.cli import main


def test_generate_writes_the_requested_clip_and_prints_metrics(tmp_path, capsys):
    out = tmp_path / "clips" / "fox.mp4"
    code = main(["generate", "--model", "tiny", "--prompt", "a red fox", "--size", "96x64", "--num-frames", "9",
                 "--fps", "12", "--steps", "2", "--seed", "11", "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["seed"] == 11 and metrics["frames"] == 9 and len(metrics["step_seconds"]) == 2
    assert "2/2" in captured.err  # the tqdm bar reached the last step
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert (frames, stream.codec_context.width, stream.codec_context.height) == (9, 96, 64)
        assert float(stream.average_rate) == 12.0


def test_generate_with_a_sparsity_preset_prints_the_sparse_attention_figures(tmp_path, capsys):
    out = tmp_path / "fox.mp4"
    code = main(["generate", "--model", "tiny", "--prompt", "a red fox", "--num-frames", "5", "--steps", "3",
                 "--sparsity", "balanced", "--out", str(out)])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["attention"] == "svg2"
    s = metrics["sparsity"]
    assert s["warmup_steps"] == 1 and s["sparse_calls"] > 0 and 0 < s["mean_density_sparse"] < 1
    assert s["attention_calls"] == s["dense_calls"] + s["sparse_calls"] + s["skipped_calls"]


def test_bad_request_names_the_field_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.mp4"
    assert main(["generate", "--prompt", "x", "--size", "100x64", "--out", str(out)]) == 2
    assert "size: width and height must be multiples of 16" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.gif")]) == 2
    assert "--out: must end in .mp4" in capsys.readouterr().err
    assert not out.exists()


def test_model_without_weights_fails_with_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code = main(["generate", "--model", "wan2.1-t2v-1.3b", "--device", "cpu", "--prompt", "x",
                 "--out", str(tmp_path / "x.mp4")])
    assert code == 3
    assert "cannot load WanPipeline" in capsys.readouterr().err


def test_image_to_video_takes_its_first_frame_from_a_file(tmp_path, capsys):
    from worker.images import synthetic_image

    frame = tmp_path / "frame.webp"
    synthetic_image(80, 60).save(frame, format="WEBP")
    out = tmp_path / "boat.mp4"
    common = ["generate", "--model", "tiny-i2v", "--prompt", "a boat", "--num-frames", "5", "--steps", "2"]
    assert main([*common, "--image", str(frame), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 5 and out.exists()
    assert main([*common, "--out", str(tmp_path / "none.mp4")]) == 2
    assert "input_reference: required" in capsys.readouterr().err
    assert main([*common, "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "m.mp4")]) == 2
    assert "input_reference: cannot read --image" in capsys.readouterr().err
    assert not (tmp_path / "none.mp4").exists() and not (tmp_path / "m.mp4").exists()
