"""Snakemake entry: fold-ensemble grades for the unlabelled images of data.test_dir."""

import torch

from fundus_tl.cache import CachedImages
from fundus_tl.evaluation import predict_images
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
predict_images(
    model_files=list(snakemake.input.models),
    images=CachedImages(snakemake.input.shards),
    summary_file=snakemake.input.summary,
    out_csv=snakemake.output[0],
    test_dir=snakemake.config["data"]["test_dir"],
    batch_size=snakemake.params.batch_size,
    device=snakemake.config["runtime"]["device"],
)
