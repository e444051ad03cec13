"""Just enough Dockerfile, .dockerignore and Makefile parsing for tests/deploy/ to compare them."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "deploy" / "docker"
# Keyed by file name (not "gpu": the conftest skips tests whose keywords say gpu).
DOCKERFILES = {name: DOCKER / name for name in ("Dockerfile", "Dockerfile.gpu")}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile in order, comments and blank lines left out."""
    found: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, value = (pending + line).strip().partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(value.split())))
        pending = ""
    return found


def values(path: Path, keyword: str) -> list[str]:
    """The values of every `keyword` instruction."""
    return [i.value for i in instructions(path) if i.keyword == keyword]


def assignments(path: Path, keyword: str) -> dict[str, str]:
    """NAME=value pairs of every ARG or ENV instruction (later ones win)."""
    found: dict[str, str] = {}
    for value in values(path, keyword):
        for word in shlex.split(value):
            name, _, setting = word.partition("=")
            found[name] = setting
    return found


def pip_installs(command: str) -> list[list[str]]:
    """The `python -m pip install ...` commands in a shell line, split into words, with the
    interpreter's path left off (`.venv/bin/python` and `/opt/enrich/venv/bin/python` are
    both `python`)."""
    found: list[list[str]] = []
    if "pip install" not in command:
        return found
    for part in command.split("&&"):
        words = shlex.split(part)
        if "pip" in words and "install" in words:
            first = words[0].rsplit("/", 1)[-1]
            found.append([first, *words[1:]])
    return found


def extras(words: list[str]) -> tuple[list[str], set[str]]:
    """The words with the `.[a,b]` target made `.[]`, and the set of extras it named."""
    out, named = [], set()
    for word in words:
        match = re.fullmatch(r"\.\[([^\]]*)\]", word)
        if match:
            named = {extra.strip() for extra in match.group(1).split(",") if extra.strip()}
            word = ".[]"
        out.append(word)
    return out, named


def makefile_recipe(target: str, path: Path = REPO_ROOT / "Makefile") -> list[str]:
    """The recipe lines of a Makefile rule, e.g. `$(STAMP)`."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line[1:])
    return recipe


def dockerignore_allows(rules: list[str], path: str) -> bool:
    """Whether a build context path is sent, by .dockerignore's rules: the last pattern that
    matches the path or one of its parent folders decides; `!` lets in."""
    allowed = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            allowed = negate
    return allowed


def dockerignore_rules(path: Path) -> list[str]:
    """The patterns of a .dockerignore file."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
