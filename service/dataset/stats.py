"""Failure statistics of a build, as the original system kept them: `stats.json`, `stats.md`
and `stats.png` (a bar chart of the outcome classes).
"""

from collections import Counter
from collections.abc import Mapping
from typing import Any

from model.taxonomy import TruncatedTaxonomy
from service.dataset import storage
from service.dataset.manifest import Failure, Kept
from service.dataset.outcomes import OK, OUTCOMES

__all__ = ["TOP_HOSTS", "build_stats", "render_chart", "render_markdown", "write_stats"]

TOP_HOSTS = 10
"""How many of the hosts with most failures the statistics name."""


def build_stats(
    results: Mapping[str, Kept | Failure],
    categories: Mapping[str, int],
    split_of: Mapping[str, str],
    truncated: TruncatedTaxonomy,
    *,
    skipped: int = 0,
) -> dict[str, Any]:
    """The statistics of a build.

    `results` holds each attempted product's latest result, `categories` every labelled
    product's truncated category (the "before" counts), `split_of` the kept products' splits;
    `skipped` counts labelled rows dropped before fetching (unknown category, repeated id).
    """
    total = len(categories)
    outcomes = Counter(OK if isinstance(r, Kept) else r.outcome for r in results.values())
    failures = [r for r in results.values() if isinstance(r, Failure)]
    hosts = Counter(f.host for f in failures)
    before = Counter(categories.values())
    after = Counter(r.category_id for r in results.values() if isinstance(r, Kept))

    def share(count: int) -> float:
        return round(count / total, 6) if total else 0.0

    return {
        "products": total,
        "attempted": len(results),
        "pending": total - len(results),
        "skipped_rows": skipped,
        "ok": outcomes[OK],
        "failed": len(failures),
        "failure_share": share(len(failures)),
        "outcomes": {
            name: {"count": outcomes[name], "share": share(outcomes[name])} for name in OUTCOMES
        },
        "reasons": dict(sorted(Counter(f.kind for f in failures).items())),
        "top_failing_hosts": [
            {"host": host, "failures": count} for host, count in hosts.most_common(TOP_HOSTS)
        ],
        "categories": {
            str(category): {
                "name": truncated.name(category),
                "before": before[category],
                "after": after[category],
            }
            for category in sorted(before)
        },
        "splits": dict(sorted(Counter(split_of.values()).items())),
    }


def render_markdown(stats: Mapping[str, Any]) -> str:
    """A readable summary of `stats`."""
    lines = [
        "# Dataset build",
        "",
        f"{stats['products']:,} labelled products, {stats['ok']:,} kept, "
        f"{stats['failed']:,} failed ({stats['failure_share']:.1%}), "
        f"{stats['pending']:,} not attempted yet.",
        "",
        "| outcome | count | share |",
        "| --- | ---: | ---: |",
    ]
    for name, value in stats["outcomes"].items():
        lines.append(f"| {name} | {value['count']:,} | {value['share']:.2%} |")
    lines += ["", "## Hosts with most failures", "", "| host | failures |", "| --- | ---: |"]
    lines += [f"| {h['host']} | {h['failures']:,} |" for h in stats["top_failing_hosts"]]
    lines += ["", "## Splits", "", "| split | products |", "| --- | ---: |"]
    lines += [f"| {name} | {count:,} |" for name, count in stats["splits"].items()]
    lines += [
        "",
        "## Categories",
        "",
        "| id | name | before | after |",
        "| ---: | --- | ---: | ---: |",
    ]
    for category, value in stats["categories"].items():
        lines.append(f"| {category} | {value['name']} | {value['before']:,} | {value['after']:,} |")
    return "\n".join(lines) + "\n"


def render_chart(stats: Mapping[str, Any]) -> bytes:
    """A PNG bar chart of the count of each outcome class."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stats["outcomes"])
    counts = [stats["outcomes"][name]["count"] for name in names]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    try:
        bars = axes.barh(names[::-1], counts[::-1], color="#4c72b0")
        axes.bar_label(bars, padding=2)
        axes.set_xlabel("products")
        axes.set_title(f"Dataset build: {stats['products']:,} products")
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="png", dpi=100)
    finally:
        plt.close(figure)
    return out.getvalue()


def write_stats(folder: str, stats: Mapping[str, Any]) -> None:
    """Write `stats.json`, `stats.md` and `stats.png` into `folder`."""
    import json

    storage.write_text(storage.join(folder, "stats.json"), json.dumps(stats, indent=1) + "\n")
    storage.write_text(storage.join(folder, "stats.md"), render_markdown(stats))
    storage.write_bytes(storage.join(folder, "stats.png"), render_chart(stats))
