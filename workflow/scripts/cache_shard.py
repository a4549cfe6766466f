"""Snakemake entry: decode one shard of images into the uint8 cache."""

from pathlib import Path

import pandas as pd

from fundus_tl.cache import build_shard
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
root = Path(snakemake.params.root)
paths = list(snakemake.input)
items = pd.DataFrame(
    {"key": [f"{snakemake.params.split}/{Path(path).relative_to(root).as_posix()}" for path in paths], "path": paths}
)
build_shard(
    items,
    snakemake.output.array,
    snakemake.output.index,
    size=snakemake.params.size,
    preprocessing=snakemake.params.preprocessing,
    threads=snakemake.threads,
)
