"""Snakemake entry: out-of-fold and holdout metrics, thresholds and plots of one experiment."""

import pandas as pd
import torch

from fundus_tl.cache import CachedImages
from fundus_tl.evaluation import PLOTS, evaluate_experiment
from fundus_tl.io import setup_logging

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
evaluate_experiment(
    experiment_name=snakemake.params.experiment,
    model_files=list(snakemake.input.models),
    oof_files=list(snakemake.input.predictions),
    history_files=list(snakemake.input.histories),
    manifest=pd.read_csv(snakemake.input.manifest, sep="\t", dtype={"image": str, "patient": str}),
    holdout_images=CachedImages(snakemake.input.shards),
    summary_out=snakemake.output.summary,
    holdout_out=snakemake.output.holdout,
    plots={name: snakemake.output[name] for name in PLOTS},
    expected_grade=snakemake.params.expected_grade,
    batch_size=snakemake.params.batch_size,
    device=snakemake.config["runtime"]["device"],
)
