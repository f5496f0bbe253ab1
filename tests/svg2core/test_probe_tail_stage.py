"""bench/probes/probe_tail_stage.py: every launch shape it times computes exactly the stage's savings and rows
(here under the Triton interpreter), with and without the key sweep, and its tables name what they time."""

from __future__ import annotations

import pytest

from tests.svg2core.bench_modules import load_bench


@pytest.mark.parametrize("sweep", [None, (3, 16)], ids=["id-order", "key-sweep"])
def test_every_variant_equals_the_product_and_is_timed(sweep):
    probe = load_bench("probes/probe_tail_stage.py")
    # 40 query clusters (two 32-row blocks of the savings, so the mirrored blocks run), 150 key clusters (two steps
    # of 128), clusters of up to ~180 tokens (the second base-128 digit of the sizes in use)
    r = probe.measure((2, 3000, 40, 150), 0.3, "cpu", sweep, rounds=1, calls=1, block=64,
                      saving_variants={k: probe.SAVING_VARIANTS[k] for k in ("product", "bm32", "bk128", "warps4")},
                      rows_variants={k: probe.ROWS_VARIANTS[k] for k in ("product", "warps8")})
    assert set(r["saving_ms"]) == {"product", "bm32", "bk128", "warps4"} and set(r["rows_ms"]) == {"product", "warps8"}
    assert all(ms > 0 for ms in (*r["saving_ms"].values(), *r["rows_ms"].values()))
    lines = probe.table("small", r)
    assert lines[0].startswith("## small: 2 heads, 3000 tokens, 40 / 150 clusters")
    assert sum(line.startswith("| saving |") for line in lines) == 4


def test_a_variant_that_computes_otherwise_stops_the_probe():
    probe = load_bench("probes/probe_tail_stage.py")
    launch = probe.launch_saving

    def off_by_one(*args, corrupt=False, **kw):  # a launch shape whose savings differ in one pair
        launch(*args, **kw)
        if corrupt:
            args[5][0, 0, 1] += 1

    probe.launch_saving = off_by_one
    with pytest.raises(SystemExit, match="savings variant bad differs"):
        probe.measure((1, 500, 20, 40), 0.3, "cpu", None, rounds=1, calls=1, block=64,
                      saving_variants={"product": {}, "bad": dict(corrupt=True)}, rows_variants={"product": {}})


def test_a_variant_that_does_not_launch_is_reported_not_timed():
    probe = load_bench("probes/probe_tail_stage.py")
    launch = probe.launch_rows

    def rejected(*args, reject=False, **kw):  # a launch shape the compiler refuses
        if reject:
            raise RuntimeError("out of resources: shared memory\nmore")
        launch(*args, **kw)

    probe.launch_rows = rejected
    r = probe.measure((1, 500, 20, 40), 0.3, "cpu", None, rounds=1, calls=1, block=64,
                      saving_variants={"product": {}}, rows_variants={"product": {}, "big": dict(reject=True)})
    assert r["failed"] == {"big": "RuntimeError: out of resources: shared memory"} and set(r["rows_ms"]) == {"product"}
    assert "| - | big | failed: RuntimeError: out of resources: shared memory | - |" in probe.table("x", r)
