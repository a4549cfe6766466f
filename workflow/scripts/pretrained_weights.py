"""Snakemake entry: fetch a model's ImageNet weights once for all fold jobs."""

from fundus_tl.io import setup_logging
from fundus_tl.models import save_pretrained

setup_logging(snakemake.log[0])
save_pretrained(snakemake.params.model, snakemake.output[0])
