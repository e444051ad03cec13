"""The frontier benchmark's pure parts (bench/frontier.py): reading the export's accuracies,
the Pareto frontier, the recommendation rule, the page, the picture and the serving copies,
on made-up figures. The measurement itself (training, conversion, `enrich serve` on Kafka and
Redis) runs as `python -m bench.frontier`, not here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bench.frontier import serving_copy, train_args
from bench.frontier_points import (
    Point,
    Spec,
    accuracy_of,
    frontier,
    markdown,
    parse_spec,
    plot,
    preparation_note,
    rate_cell,
    recommend,
    table,
    target_lines,
    warm_products,
)


def _point(key: str, variant: str, pi: float | None, pps: float | None, **extra: Any) -> Point:
    accuracy = {} if pi is None else {"product-images": pi, "both": pi + 0.04}
    return Point(key, "EfficientNet-Lite0", "efficientnet_lite0", 128, variant,
                 accuracy=accuracy, warm_pps=pps, solo_ips=None if pps is None else 2 * pps,
                 **extra)  # fmt: skip


def _entry() -> dict[str, Any]:
    def validation(both: float, pi: float) -> dict[str, Any]:
        return {
            "accuracy": both,
            "images": 1640,
            "sources": {
                "product-images": {"accuracy": pi, "images": 637},
                "fashion-products": {"accuracy": 0.97, "images": 1003},
            },
        }

    return {
        "default": "int8",
        "keras": {"images_per_s": 50.0, "validation": validation(0.9476, 0.9074)},
        "files": {
            "none": {"file": "model.tflite", "bytes": 13_700_000,
                     "validation": validation(0.9476, 0.9074)},
            "int8": {"file": "model.int8.tflite", "bytes": 4_100_000,
                     "validation": validation(0.9463, 0.9042)},
        },
    }  # fmt: skip


def test_specs_parse_and_train_with_the_demo_recipe_at_their_size() -> None:
    """``lite0:160`` names the backbone and size; the training command is make demo-heads'
    recipe with ``--image-size``; a bad spec is refused."""
    spec = parse_spec("lite0:160")
    assert Spec("lite0", 160) == spec
    assert ("efficientnet_lite0", "lite0-160") == (spec.backbone, spec.key)
    args = train_args(spec, Path("/s"), Path("/out"))
    assert args[0] == "train"
    for flag, value in (("--image-size", "160"), ("--heads", "marginal"), ("--holdout", "0.1"),
                        ("--weights", "imagenet-lite"), ("--output", "/out")):  # fmt: skip
        assert args[args.index(flag) + 1] == value
    assert args.count("--labels") == 2
    with pytest.raises(argparse.ArgumentTypeError):
        parse_spec("resnet:224")


def test_a_tuned_spec_fine_tunes_its_top_blocks_and_has_a_folder_of_its_own() -> None:
    """``lite1:240:tuned5`` trains with ``--fine-tune-blocks 5``, lives apart from the frozen
    ``lite1-240`` and says so in its label; the frozen spec passes no such flag; malformed
    tails are refused."""
    tuned = parse_spec("lite1:240:tuned5")
    assert Spec("lite1", 240, 5) == tuned
    assert tuned.key == "lite1-240-tuned5"
    assert "5 blocks tuned" in tuned.label
    args = train_args(tuned, Path("/s"), Path("/out"))
    assert args[args.index("--fine-tune-blocks") + 1] == "5"
    assert "--fine-tune-blocks" not in train_args(parse_spec("lite1:240"), Path("/s"), Path("/o"))
    for bad in ("lite1:240:5", "lite1:240:tuned", "lite1:240:tunedx"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_spec(bad)


def test_accuracies_come_from_the_export_entry_per_runtime_and_source() -> None:
    """Keras and each flat buffer: both sources and each source; nothing when unmeasured."""
    entry = _entry()
    assert {"both": 0.9463, "product-images": 0.9042, "fashion-products": 0.97} == accuracy_of(
        entry, "int8"
    )
    assert 0.9074 == accuracy_of(entry, "keras")["product-images"]
    assert {} == accuracy_of({"keras": {}, "files": {}}, "keras")


def test_warm_runs_are_sized_from_the_solo_rate_within_bounds() -> None:
    """About 20 s at the solo rate, never fewer than 1,500 or more than 12,000 products."""
    assert 1500 == warm_products(None)
    assert 1500 == warm_products(40.0)
    assert 4000 == warm_products(200.0)
    assert 12_000 == warm_products(5000.0)


def test_the_frontier_keeps_only_points_nothing_beats_on_both_axes() -> None:
    """A point both less accurate and slower than another is off; ties on one axis count."""
    a = _point("a", "keras", 0.91, 100.0)
    b = _point("b", "int8", 0.90, 300.0)
    c = _point("c", "none", 0.89, 200.0)  # beaten by b
    d = _point("d", "int8", 0.90, 250.0)  # same accuracy as b, slower
    e = _point("e", "keras", None, 900.0)  # no accuracy: not placed
    assert ["a", "b"] == [p.key for p in frontier([a, b, c, d, e])]


def test_recommendation_rule() -> None:
    """Both targets met: the fastest that meets them. Otherwise, of the points fast enough,
    the fastest within half a point of the most accurate; none fast enough: the same over
    all points."""
    slow_accurate = _point("slow", "keras", 0.95, 100.0)
    fast_accurate = _point("fast", "int8", 0.94, 450.0)
    faster_accurate = _point("faster", "int8", 0.935, 800.0)
    best, why = recommend([slow_accurate, fast_accurate, faster_accurate])
    assert best is faster_accurate
    assert "meets both targets" in why

    float_fast = _point("float", "none", 0.9074, 420.0)
    int8_faster = _point("int8", "int8", 0.9042, 700.0)  # 0.32 points less: within tolerance
    int8_small = _point("small", "int8", 0.8700, 1200.0)  # faster but 3.7 points less
    best, why = recommend([slow_accurate, float_fast, int8_faster, int8_small])
    assert best is int8_faster
    assert "no candidate meets both targets" in why
    assert "2.6 points short" in why

    best, why = recommend([slow_accurate, _point("x", "int8", 0.947, 150.0)])
    assert "x" == best.key if best else False
    assert "no candidate serves 400" in why
    assert (None, "nothing was measured end to end with a known accuracy") == recommend([])


def _result(points: list[Point]) -> dict[str, Any]:
    best, why = recommend(points)
    return {
        "date": "2026-11-30 12:00 UTC",
        "commit": "abc1234",
        "command": "deploy/local/with-services.sh nice -n 10 python -m bench.frontier",
        "machine": {"cores": 2, "cpu": "AMD EPYC", "memory_gib": 23.5, "tensorflow": "2.21.0"},
        "total_s": 1500.0,
        "stages_s": {"models": 600.0, "solo": 60.0, "end to end": 840.0},
        "load_average": [0.5, 2.0],
        "batch": 32,
        "recommended": best.key if best else None,
        "recommendation_reason": why,
        "recommended_commands": ["enrich train ...", "ENRICH_RUNTIME=auto enrich serve"],
        "analysis": ["Warm products/s reach 0.50-0.70 of the solo images/s."],
        "method": ["Solo: measure_speed."],
        "not_measured": ["A GPU: none."],
    }


def test_the_page_has_the_table_targets_recommendation_and_command() -> None:
    """Every point is a row (the recommended one in bold, the frontier marked, documented
    accuracies starred); the targets are judged; the command and what was not measured."""
    points = [
        _point("lite0-128-int8", "int8", 0.8900, 520.0, megabytes=3.9),
        _point("lite0-224-keras", "keras", 0.9074, 90.0, megabytes=14.5),
        Point("mnv3s-128-keras", "MobileNetV3-Small", "mobilenet_v3_small", 128, "keras",
              accuracy={"product-images": 0.7975}, accuracy_note="documented figure",
              solo_ips=1000.0, warm_pps=650.0, megabytes=4.0),
    ]  # fmt: skip
    page = markdown(_result(points), points)
    assert (
        "| **EfficientNet-Lite0** | 128 | LiteRT int8 | 0.8900 | 0.9300 | n/a | 1,040 | 520 | "
        "0.50 | 3.9 | yes |" in page
    )
    assert "| MobileNetV3-Small | 128 | Keras | 0.7975 * | n/a | n/a | 1,000 | 650 | 0.65 |" in page
    assert "\\* documented figure" in page
    assert "**not met** by any candidate" in page
    assert "## Recommended CPU default" in page
    assert "**EfficientNet-Lite0 at 128 px, LiteRT int8**" in page
    assert "    ENRICH_RUNTIME=auto enrich serve" in page
    assert "deploy/local/with-services.sh nice -n 10 python -m bench.frontier" in page
    assert "- A GPU: none." in page
    assert "25.0 minutes in all" in page


def test_targets_met_are_named() -> None:
    """A point with both targets met is named as meeting them."""
    points = [_point("p", "int8", 0.94, 450.0)]
    assert "**met** by EfficientNet-Lite0 128 px LiteRT int8." in target_lines(points)[0]
    assert ["| model |"] == [line[:9] for line in table(points)[:1]]


def test_the_picture_is_drawn(tmp_path: Path) -> None:
    """A PNG with something on it, points without a warm rate or accuracy left out."""
    points = [_point("a", "keras", 0.91, 100.0), _point("b", "int8", 0.90, 300.0),
              _point("c", "none", None, None)]  # fmt: skip
    plot(points, tmp_path / "frontier.png", points[1])
    with Image.open(tmp_path / "frontier.png") as picture:
        assert picture.size[0] > 800
        darkest = picture.convert("L").getextrema()[0]
        assert isinstance(darkest, int)
        assert darkest < 200, "something is drawn"


def test_several_warm_runs_show_their_range_and_reused_models_their_cost() -> None:
    """The rate cell is the mean with the slowest and fastest run; models an earlier run
    made are named with the minutes they took."""
    point = _point("p", "int8", 0.9, 449.5, warm_runs=[440.0, 459.0])
    assert "450 (440-459)" == rate_cell(point)
    assert "100" == rate_cell(_point("q", "int8", 0.9, 100.0, warm_runs=[100.0]))
    stages = {"a": {"train_s": 100, "export_s": 50, "reused": True}, "b": {"train_s": 30}}
    assert "1 model an earlier run had trained and exported (that took 2.5 minutes more)" in (
        preparation_note(stages)
    )
    assert "" == preparation_note({"b": {"train_s": 30}})


def test_a_serving_copy_makes_its_flat_buffer_the_default(tmp_path: Path) -> None:
    """The copy's metadata names the flat buffer as default and its checksums verify, so the
    service's `ENRICH_RUNTIME=litert` serves it; the original is untouched."""
    from model.classifier import verified_bytes, write_checksums
    from model.litert import default_variant
    from model.runtime import choose_runtime

    source = tmp_path / "model"
    source.mkdir()
    (source / "model.keras").write_bytes(b"keras")
    (source / "model.tflite").write_bytes(b"float")
    (source / "model.int8.tflite").write_bytes(b"int8")
    metadata = {"litert": {**_entry(), "default": "none"}}
    (source / "metadata.json").write_text(json.dumps(metadata))
    names = ["model.keras", "metadata.json", "model.tflite", "model.int8.tflite"]
    write_checksums(source, names)

    copy = serving_copy(source, "int8", tmp_path / "serve" / "int8")
    served = json.loads(verified_bytes(copy, "metadata.json"))
    assert "int8" == default_variant(served)
    assert ("litert", "asked for") == choose_runtime("litert", served, gpu=False, directory=copy)
    assert b"int8" == verified_bytes(copy, "model.int8.tflite")
    assert "none" == default_variant(json.loads((source / "metadata.json").read_text()))
