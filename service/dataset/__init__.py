"""Training sets from labelled image URLs: fetch, resize, TFRecord shards, split, statistics.

One stage per module: `outcomes` (failure classes), `records` (the tf.train.Example and the
resize), `storage` (atomic files on any `tf.io.gfile` path), `manifest` (what a finished
shard holds), `split` (70/15/15, content-safe), `stats` (the reports), `finalize` (manifests
→ split, failures, statistics) and `build` (the fetch → decode → write loop).
"""

from service.dataset.build import BuildConfig, BuildReport, build_dataset
from service.dataset.errors import DatasetError
from service.dataset.finalize import Finalized, finalize
from service.dataset.outcomes import FAILURES, OUTCOMES, classify

__all__ = [
    "FAILURES",
    "OUTCOMES",
    "BuildConfig",
    "BuildReport",
    "DatasetError",
    "Finalized",
    "build_dataset",
    "classify",
    "finalize",
]
