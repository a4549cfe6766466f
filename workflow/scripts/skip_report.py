"""Snakemake entry: every input file that is not used, with the reason; cross-split duplicates."""

from fundus_tl.cache import cross_split_duplicates, skipped_files
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
indexes = list(snakemake.input.indexes)
skipped_files(snakemake.params.scan_skipped, indexes, snakemake.output.skipped)
cross_split_duplicates(indexes, snakemake.output.duplicates)
