"""Snakemake entry: write the synthetic demo data set."""

from fundus_tl.io import setup_logging
from fundus_tl.synthetic import write_demo_scan

setup_logging(snakemake.log[0])
write_demo_scan(snakemake.params.root, snakemake.params.demo)
