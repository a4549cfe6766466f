"""Snakemake entry: every input file that is not used, with the reason."""

from fundus_tl.cache import skipped_files
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
skipped_files(snakemake.params.scan_skipped, list(snakemake.input.indexes), snakemake.output[0])
