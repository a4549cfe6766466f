"""Snakemake entry: compare all experiments in one table."""

from fundus_tl.evaluation import leaderboard
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
leaderboard(list(snakemake.input), snakemake.output[0])
