"""Snakemake entry: decode the images of one shard inventory into the uint8 cache."""

from fundus_tl.cache import build_shard
from fundus_tl.dataset import read_inventory
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
build_shard(
    read_inventory(snakemake.input.inventory),
    snakemake.output.array,
    snakemake.output.index,
    size=snakemake.params.size,
    preprocessing=snakemake.params.preprocessing,
    threads=snakemake.threads,
)
