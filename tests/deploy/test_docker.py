"""The container images: linted, and kept in step with what `make test` installs and proves."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.config import Settings
from tests.deploy import dockerfile as df

HADOLINT = Path(sys.executable).parent / "hadolint"
DEFAULTS = Settings.model_fields


def _hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), f"{HADOLINT} is missing: the dev extra installs it (make install)"
    return subprocess.run(
        [str(HADOLINT), "--no-color", *map(str, paths)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _install_commands(path: Path) -> list[tuple[list[str], set[str]]]:
    """The Dockerfile's pip commands with ${EXTRAS} read from its ARG default, split into the
    words and the extras."""
    extras_arg = df.assignments(path, "ARG")["EXTRAS"]
    runs = [run.replace("${EXTRAS}", extras_arg) for run in df.values(path, "RUN")]
    return [df.extras(words) for run in runs for words in df.pip_installs(run)]


def _makefile_install_commands() -> list[tuple[list[str], set[str]]]:
    recipe = df.makefile_recipe("$(STAMP)")
    return [df.extras(words) for line in recipe for words in df.pip_installs(line)]


def test_hadolint_passes_on_both_dockerfiles() -> None:
    """hadolint finds nothing to report in the CPU and the GPU Dockerfile."""
    done = _hadolint(*df.DOCKERFILES.values())
    assert 0 == done.returncode, done.stdout + done.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter is live: a Dockerfile that runs as root with unpinned installs fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nUSER root\n")
    done = _hadolint(bad)
    assert 0 != done.returncode
    for rule in ("DL3006", "DL3013", "DL3002"):
        assert rule in done.stdout


@pytest.mark.parametrize(
    ("variant", "image_only"), [("Dockerfile", set()), ("Dockerfile.gpu", {"gpu"})]
)
def test_image_installs_with_the_makefiles_commands(variant: str, image_only: set[str]) -> None:
    """The image's pip commands are the Makefile's word for word; its extras are the Makefile's
    less `dev` (plus `gpu` in the GPU image), so the image cannot drift from what is tested."""
    make = _makefile_install_commands()
    image = _install_commands(df.DOCKERFILES[variant])
    assert len(make) >= 2, "the Makefile's install recipe has no pip commands any more"
    assert [words for words, _ in make] == [words for words, _ in image]
    assert [named - {"dev"} for _, named in make] == [named - image_only for _, named in image]
    assert all("dev" not in named for _, named in image)
    if image_only:
        assert any(image_only <= named for _, named in image)
        optional = tomllib.loads((df.REPO_ROOT / "pyproject.toml").read_text())
        assert image_only <= set(optional["project"]["optional-dependencies"])


def test_makefile_change_would_break_the_install_comparison(tmp_path: Path) -> None:
    """The comparison reads the real recipe: a changed pip flag in a Makefile shows up."""
    makefile = tmp_path / "Makefile"
    text = (df.REPO_ROOT / "Makefile").read_text()
    makefile.write_text(text.replace("pip install -q -e", "pip install -q --no-deps -e", 1))
    recipe = df.makefile_recipe("$(STAMP)", makefile)
    changed = [df.extras(w)[0] for line in recipe for w in df.pip_installs(line)]
    image = [words for words, _ in _install_commands(df.DOCKERFILES["Dockerfile"])]
    assert changed != image


def test_gpu_dockerfile_is_the_cpu_one_but_for_its_gpu_lines() -> None:
    """Dockerfile.gpu differs from Dockerfile only in its extras, the NVIDIA settings and its
    description, so a fix to one cannot be forgotten in the other."""
    cpu = df.instructions(df.DOCKERFILES["Dockerfile"])
    gpu = df.instructions(df.DOCKERFILES["Dockerfile.gpu"])
    gpu_only = [i for i in gpu if i.keyword == "ENV" and "NVIDIA_VISIBLE_DEVICES" in i.value]
    assert 1 == len(gpu_only)
    gpu = [i for i in gpu if i not in gpu_only]
    differing = [(a, b) for a, b in zip(cpu, gpu, strict=True) if a != b]
    assert {a.keyword for a, _ in differing} == {"ARG", "LABEL"}
    assert ("ARG", "EXTRAS=pretrained,gpu") in {(b.keyword, b.value) for _, b in differing}


def test_image_python_is_the_python_make_test_runs() -> None:
    """The base image's Python minor is the one this test suite runs under, and the project's
    requires-python accepts it."""
    image = df.assignments(df.DOCKERFILES["Dockerfile"], "ARG")["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", image)
    assert match, image
    assert (int(match[1]), int(match[2])) == sys.version_info[:2]
    project = tomllib.loads((df.REPO_ROOT / "pyproject.toml").read_text())["project"]
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert low, project["requires-python"]
    assert (int(low[1]), int(low[2])) <= (int(match[1]), int(match[2]))


@pytest.mark.parametrize("variant", ["Dockerfile", "Dockerfile.gpu"])
def test_image_is_multi_stage_non_root_with_health_and_stop_signal(variant: str) -> None:
    """Each image builds in one stage and runs in another, as a numeric non-root user, exposes
    the metrics port the service defaults to, checks /healthz, stops on SIGTERM and runs
    `enrich serve`."""
    path = df.DOCKERFILES[variant]
    assert len(df.values(path, "FROM")) >= 2
    assert any(v.startswith("--from=build ") for v in df.values(path, "COPY"))
    user = df.values(path, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user
    assert int(uid) > 0
    assert not gid or int(gid) > 0
    port = DEFAULTS["metrics_port"].default
    env = df.assignments(path, "ENV")
    assert [str(port)] == df.values(path, "EXPOSE")
    assert str(port) == env["ENRICH_METRICS_PORT"]
    healthcheck = df.values(path, "HEALTHCHECK")[0]
    assert "/healthz" in healthcheck
    assert "ENRICH_METRICS_PORT" in healthcheck
    assert ["SIGTERM"] == df.values(path, "STOPSIGNAL")
    assert ['["enrich"]'] == df.values(path, "ENTRYPOINT")
    assert ['["serve"]'] == df.values(path, "CMD")
    assert env["ENRICH_MODEL_DIR"] == df.values(path, "COPY")[-1].split()[-1]


def test_image_shutdown_deadline_is_the_services_default() -> None:
    """The deadline the images set is the service's default one, which the chart's grace
    period is computed from (tests/deploy/test_helm.py)."""
    default = DEFAULTS["shutdown_deadline_s"].default
    for path in df.DOCKERFILES.values():
        assert default == float(df.assignments(path, "ENV")["ENRICH_SHUTDOWN_DEADLINE_S"])


def test_healthcheck_command_is_valid_python() -> None:
    """The HEALTHCHECK's exec form parses and its Python program compiles."""
    healthcheck = df.values(df.DOCKERFILES["Dockerfile"], "HEALTHCHECK")[0]
    exec_form = healthcheck.split(" CMD ", 1)[1]
    argv = shlex.split(exec_form.strip("[]").replace('", "', '" "'))
    assert argv[0].endswith("/python")
    assert "-c" == argv[1]
    compile(argv[2], "healthcheck", "exec")


@pytest.mark.parametrize("variant", ["Dockerfile", "Dockerfile.gpu"])
def test_build_context_holds_what_the_image_copies(variant: str) -> None:
    """The Dockerfile's .dockerignore sends every file the image copies (the default model
    placeholder included) and leaves out the virtual environment, git and the tests."""
    path = df.DOCKERFILES[variant]
    ignore = path.with_name(path.name + ".dockerignore")
    rules = df.dockerignore_rules(ignore)
    args = df.assignments(path, "ARG")
    sources: list[str] = []
    for copy in df.values(path, "COPY"):
        words = copy.split()
        if words[0].startswith("--from"):
            continue
        sources += [args.get(w[2:-1], w) if w.startswith("${") else w for w in words[:-1]]
    files = []
    for source in sources:
        root = df.REPO_ROOT / source
        for file in [root] if root.is_file() else root.rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                files.append(file.relative_to(df.REPO_ROOT).as_posix())
    assert {"pyproject.toml", "README.md", "service/cli.py", "schemas/product.avsc"} <= set(files)
    assert [f for f in files if not df.dockerignore_allows(rules, f)] == []
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".tools/helm-render"):
        assert not df.dockerignore_allows(rules, unwanted)
