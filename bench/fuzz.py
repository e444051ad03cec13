"""Fuzzing the two places where outside bytes enter the service, with atheris (libFuzzer).

    .venv/bin/python -m bench.fuzz --target {image,record,all} --seconds 300 [--work DIR]

Targets, each one input at a time:

- ``image``: :func:`model.preprocess.decode_image`, the service's decode entry point, at the
  default model's input size. The one allowed exception is ``InvalidImageError``: the image
  stage (service/images.py ``_decode``) turns it into ``IMAGE_INVALID`` and lets anything
  else through as a bug.
- ``record``: an incoming Kafka value as service/pipeline.py ``_handle`` takes it: the
  ``Product`` codec's ``decode``, ``parse_product``, the event time, then encoding the
  ``CategoryEnrichment`` the product is answered with. Allowed: the exceptions ``_handle``
  catches (they dead-letter the message); anything else would end the consumer loop.

Each target runs in a child process (libFuzzer exits on the first crash), seeded with a small
corpus (shared photos plus the hostile images of tests/reliability/test_hostile_input.py;
valid and invalid encoded products), and stops after ``-max_total_time``. The runner reads
the number of executions and the crashing input libFuzzer saved from the child's log.

The target functions import nothing from atheris, so tests run them without it
(tests/bench/test_fuzz.py). atheris comes with the ``fuzz`` extra (``make fuzz``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.errors import InvalidImageError
from model.preprocess import decode_image
from service.contract import SingleObjectCodec
from service.errors import SerializationError
from service.records import MAX_URL_LENGTH, Status, enrichment, parse_product

if TYPE_CHECKING:
    from tests.reliability.scenarios import Row

REPO_ROOT = Path(__file__).resolve().parent.parent
PRODUCT = SingleObjectCodec.for_schema("product")
ENRICHMENT = SingleObjectCodec.for_schema("category_enrichment")

IMAGE_SIZE = 128
"""The default CPU model's input size (``model.train.DEFAULT_IMAGE_SIZE``, not imported here
because model.train loads TensorFlow; tests/bench/test_fuzz.py checks they agree)."""

RECORD_ERRORS: tuple[type[Exception], ...] = (
    SerializationError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
)
"""What service/pipeline.py ``_handle`` catches around decoding and parsing a value (the
message goes to the dead-letter topic); tests/bench/test_fuzz.py checks they agree."""

_MODEL_RECORD = {
    "name": "fuzz",
    "version": "0" * 64,
    "backbone": "tiny",
    "taxonomy_version": "2021-09-21",
    "depth": 4,
}
_SOURCE = ("fuzz", 0, 0)


# -- the targets ---------------------------------------------------------------------------


def image_input(data: bytes) -> str:
    """One image-target input: ``"decoded"`` or ``"rejected"`` (``InvalidImageError``).

    Any other exception propagates (a finding), as does pixels of the wrong shape or type.
    """
    try:
        pixels = decode_image(data, IMAGE_SIZE)
    except InvalidImageError:
        return "rejected"
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or pixels.dtype.name != "uint8":
        raise AssertionError(f"decode_image returned {pixels.dtype} {pixels.shape}")
    return "decoded"


def record_input(data: bytes) -> str:
    """One record-target input: ``"dead-letter"``, ``"invalid-input"`` or ``"valid"``.

    Decoding and parsing may raise only :data:`RECORD_ERRORS`; the output record of the
    product (``INVALID_INPUT`` with its reason, or an image status for a valid one) must
    encode. Anything else propagates (a finding).
    """
    try:
        record = PRODUCT.decode(data)
        product, invalid = parse_product(record)
        product.updated_at.timestamp()
    except RECORD_ERRORS:
        return "dead-letter"
    status: Status = "INVALID_INPUT" if invalid is not None else "IMAGE_UNAVAILABLE"
    reason = invalid if invalid is not None else "fuzz: not fetched"
    output = enrichment(product, status=status, model=_MODEL_RECORD, source=_SOURCE, error=reason)
    ENRICHMENT.encode(output)
    return "valid" if invalid is None else "invalid-input"


# -- seed corpora ----------------------------------------------------------------------------


def image_seeds(shared: Path | None = None, photos: int = 3) -> dict[str, bytes]:
    """A few shared photos (a fixed sample) and the hostile images of the reliability tests."""
    from bench.harness import load_photos, shared_data
    from tests.reliability.test_hostile_input import _hostile_images

    chosen = load_photos(shared or shared_data(), photos)
    seeds = {f"photo-{i}": photo.data for i, photo in enumerate(chosen)}
    for name, (body, _) in _hostile_images(chosen[0].data).items():
        seeds[f"hostile-{name}"] = body
    return seeds


def record_seeds() -> dict[str, bytes]:
    """Encoded products, valid and invalid in each way ``parse_product`` knows, and two
    values that are not products at all."""
    from bench.harness import product_record

    when = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    base = product_record("p-1", "http://127.0.0.1:8080/images/a.jpg", when)
    variants: dict[str, dict[str, Any]] = {
        "plain": {},
        "full": {
            "title": "Robe d'été à fleurs \u2013 \U0001f457",
            "description": "x" * 300,
            "additional_image_urls": ["https://cdn.example.com/b.png", "http://[::1]/c.webp"],
            "partner_category": "Vêtements > Robes",
        },
        "no-image": {"image_url": None, "additional_image_urls": ["http://example.com/a.jpg"]},
        "empty-id": {"product_id": ""},
        "file-url": {"image_url": "file:///etc/passwd"},
        "credentials": {"image_url": "http://admin:secret@example.com/a.jpg"},
        "ipv6": {"image_url": "http://[::ffff:127.0.0.1]:8080/a.jpg"},
        "bad-ipv6": {"image_url": "http://[::1/a.jpg"},
        "no-host": {"image_url": "http:///a.jpg"},
        "long-url": {"image_url": "http://example.com/" + "a" * MAX_URL_LENGTH},
        "epoch": {"updated_at": dt.datetime(1970, 1, 1, tzinfo=dt.UTC)},
        "before-epoch": {"updated_at": dt.datetime(1900, 1, 1, tzinfo=dt.UTC)},
        "far-future": {"updated_at": dt.datetime(9999, 12, 31, tzinfo=dt.UTC)},
    }
    seeds = {name: PRODUCT.encode({**base, **change}) for name, change in variants.items()}
    seeds["not-avro"] = b"\x00\x01garbage"
    seeds["unknown-fingerprint"] = b"\xc3\x01" + b"\x00" * 8 + seeds["plain"][10:]
    return seeds


@dataclass(frozen=True)
class Target:
    """One fuzz target: the function of one input and where its seeds come from."""

    name: str
    title: str
    one_input: Callable[[bytes], str]
    seeds: Callable[[], dict[str, bytes]]


TARGETS: dict[str, Target] = {
    "image": Target("image", "decode_image", image_input, image_seeds),
    "record": Target("record", "Product record decoding", record_input, record_seeds),
}


# -- without atheris: seeds and random mutations (CI) ----------------------------------------

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF)


def mutate(data: bytes, rng: random.Random, pool: Sequence[bytes]) -> bytes:
    """One random mutation of ``data`` (bit flips and odd bytes, mostly near the start where
    headers are; truncation, insertion, duplication, splicing with ``pool``, random bytes)."""
    buffer = bytearray(data)
    kind = rng.randrange(7)
    if kind == 0 or not buffer:
        return rng.randbytes(rng.randrange(0, 512))

    def position() -> int:
        head = min(len(buffer), 64)
        return rng.randrange(head) if rng.random() < 0.6 else rng.randrange(len(buffer))

    if kind == 1:
        for _ in range(rng.randint(1, 8)):
            buffer[position()] ^= 1 << rng.randrange(8)
    elif kind == 2:
        for _ in range(rng.randint(1, 4)):
            buffer[position()] = rng.choice(_INTERESTING)
    elif kind == 3:
        del buffer[rng.randrange(len(buffer)) :]
    elif kind == 4:
        at = position()
        buffer[at:at] = rng.randbytes(rng.randint(1, 32))
    elif kind == 5:
        start = position()
        end = min(len(buffer), start + rng.randint(1, 64))
        buffer[end:end] = buffer[start:end] * rng.randint(1, 4)
    else:
        other = rng.choice(pool)
        buffer = buffer[: rng.randrange(len(buffer) + 1)] + other[rng.randrange(len(other) + 1) :]
    return bytes(buffer)


def smoke_check(
    target: str,
    *,
    seeds: dict[str, bytes] | None = None,
    mutations: int = 300,
    seed: int = 0,
) -> Counter[str]:
    """Run ``target``'s one-input function over its seeds (``seeds``, default the target's
    own) and ``mutations`` mutated inputs, without atheris; returns how many inputs ended in
    each outcome. An unexpected exception propagates with the input named in a note."""
    chosen = TARGETS[target]
    corpus = list((seeds if seeds is not None else chosen.seeds()).items())
    rng = random.Random(seed)
    pool = [data for _, data in corpus]
    inputs = [*corpus]
    for i in range(mutations):
        name, data = corpus[i % len(corpus)]
        inputs.append((f"mutation {i} of {name}", mutate(data, rng, pool)))
    outcomes: Counter[str] = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow on corrupt EXIF, many times
        for name, data in inputs:
            try:
                outcomes[chosen.one_input(data)] += 1
            except BaseException as exc:
                exc.add_note(f"fuzz target {target}, input {name!r}: {data[:64]!r}...")
                raise
    return outcomes


# -- with atheris: the child process and its log ----------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One input libFuzzer saved: ``crash`` (an unexpected exception), ``timeout``, ``oom``."""

    kind: str
    path: str
    error: str


@dataclass
class FuzzResult:
    """One atheris run of one target."""

    target: str
    seconds: float
    executions: int
    exec_per_s: int
    new_units: int
    peak_rss_mb: int
    """libFuzzer's (getrusage): at least this runner's own peak, which exec carries over."""
    wall_s: float
    """Seeding, instrumenting and fuzzing."""
    log: str
    findings: list[Finding] = field(default_factory=list)

    def row(self) -> Row:
        """The run as a line of the reliability table."""
        from tests.reliability.scenarios import Row

        return Row(
            scenario=f"fuzz: {TARGETS[self.target].title} ({self.seconds:g} s)",
            runs=1,
            inputs=self.executions,
            outputs=self.executions - len(self.findings),
            lost=len(self.findings),
            duplicates=0,
            guarded_hits=0,
            max_recovery_s=0.0,
        )


@dataclass(frozen=True)
class LogSummary:
    """What a libFuzzer log says: executions, new corpus units, peak RSS, saved inputs."""

    executions: int | None
    exec_per_s: int
    new_units: int
    peak_rss_mb: int
    artifacts: list[str]
    error: str


def _last_int(pattern: str, text: str) -> int | None:
    found = re.findall(pattern, text, re.M)
    return int(found[-1]) if found else None


def parse_log(text: str) -> LogSummary:
    """Read a libFuzzer (atheris) log: final stats when present, else the last progress line."""
    executions = _last_int(r"^stat::number_of_executed_units:\s*(\d+)", text)
    if executions is None:
        executions = _last_int(r"^Done (\d+) runs", text)
    if executions is None:
        executions = _last_int(r"^#(\d+)\s", text)
    error = ""
    python = re.search(r"=== Uncaught Python exception: ===\n(.*?)\n==\d+== ERROR", text, re.S)
    if python is not None:
        error = python.group(1).strip()
    else:
        native = re.search(r"==\d+== ERROR: libFuzzer: (.*)", text)
        if native is not None:
            error = native.group(1).strip()
    return LogSummary(
        executions=executions,
        exec_per_s=_last_int(r"^stat::average_exec_per_sec:\s*(\d+)", text) or 0,
        new_units=_last_int(r"^stat::new_units_added:\s*(\d+)", text) or 0,
        peak_rss_mb=_last_int(r"^stat::peak_rss_mb:\s*(\d+)", text) or 0,
        artifacts=re.findall(r"Test unit written to (\S+)", text),
        error=error,
    )


def _kind(artifact: str, prefix: str) -> str:
    name = Path(artifact).name.removeprefix(prefix)
    return name.split("-", 1)[0]


def fuzz(
    target: str,
    seconds: float,
    work: Path,
    *,
    input_timeout_s: int = 30,
    rss_limit_mb: int = 2048,
) -> FuzzResult:
    """Fuzz ``target`` with atheris for ``seconds`` in a child process, corpus and saved
    inputs under ``work``; raises ``RuntimeError`` if the child ran nothing (no atheris)."""
    chosen = TARGETS[target]
    corpus = work / f"corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, data in chosen.seeds().items():
        (corpus / f"seed-{name}").write_bytes(data)
    saved = work / "findings"
    saved.mkdir(parents=True, exist_ok=True)
    prefix = f"{target}-"
    log = work / f"{target}.log"
    command = [
        sys.executable, "-m", "bench.fuzz", "--child", target,
        f"-max_total_time={max(1, round(seconds))}", f"-timeout={input_timeout_s}",
        f"-rss_limit_mb={rss_limit_mb}", "-print_final_stats=1",
        f"-artifact_prefix={saved}/{prefix}", str(corpus),
    ]  # fmt: skip
    began = time.monotonic()
    with log.open("wb") as stream:
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT)
        try:
            code = child.wait(seconds + input_timeout_s + 300)
        except subprocess.TimeoutExpired:
            child.kill()
            code = child.wait(30)
    wall = time.monotonic() - began
    text = log.read_text(errors="replace")
    summary = parse_log(text)
    if summary.executions is None:
        raise RuntimeError(
            f"fuzz {target}: the child ran nothing (exit {code}; is atheris installed? "
            f"pip install -e '.[fuzz]'):\n{text[-3000:]}"
        )
    findings = [Finding(_kind(a, prefix), a, summary.error) for a in summary.artifacts]
    if code != 0 and not findings:
        findings.append(Finding("exit", str(log), f"child exited {code}: {text[-500:]}"))
    return FuzzResult(
        target=target,
        seconds=seconds,
        executions=summary.executions,
        exec_per_s=summary.exec_per_s,
        new_units=summary.new_units,
        peak_rss_mb=summary.peak_rss_mb,
        wall_s=round(wall, 1),
        log=str(log),
        findings=findings,
    )


def fuzz_row(target: str, seconds: float, work: Path) -> Row:
    """Fuzz ``target`` (``image`` or ``record``) for ``seconds``; the reliability-table row.

    Inputs are executions, outputs executions without an unexpected exception, lost the
    inputs libFuzzer saved (each path and error is printed on stderr).
    """
    result = fuzz(target, seconds, work)
    for finding in result.findings:
        print(f"fuzz {target}: {finding.kind} saved at {finding.path}\n{finding.error}",
              file=sys.stderr, flush=True)  # fmt: skip
    return result.row()


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """In the child: instrument what is loaded (Pillow, fastavro, the project) and fuzz."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    one_input = TARGETS[target].one_input

    def test_one_input(data: bytes) -> None:
        one_input(data)

    warnings.simplefilter("ignore", UserWarning)  # Pillow on corrupt EXIF, many times
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def main(argv: Sequence[str] | None = None) -> int:
    """Fuzz the chosen targets one after the other; print each result; 1 if anything crashed."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"]:
        _child(args[1], args[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--seconds", type=float, default=300.0, help="per target")
    parser.add_argument("--work", type=Path, default=None, help="default .run/fuzz/<time>")
    parser.add_argument("--input-timeout", type=int, default=30, help="seconds per input")
    options = parser.parse_args(args)
    work = options.work or REPO_ROOT / ".run" / "fuzz" / time.strftime("%Y%m%d-%H%M%S")
    targets = list(TARGETS) if options.target == "all" else [options.target]
    results = []
    for target in targets:
        result = fuzz(target, options.seconds, work, input_timeout_s=options.input_timeout)
        results.append(result)
        print(json.dumps(asdict(result)), flush=True)
        for finding in result.findings:
            print(f"{target}: {finding.kind} saved at {finding.path}\n{finding.error}\n")
    print("| target | seconds | executions | exec/s | new units | findings |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {TARGETS[r.target].title} | {r.seconds:g} | {r.executions:,} "
              f"| {r.exec_per_s:,} | {r.new_units} | {len(r.findings)} |")  # fmt: skip
    print(f"work folder: {work}")
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
