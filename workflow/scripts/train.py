"""Snakemake entry: train one fold of one experiment."""

import pandas as pd

from fundus_tl.cache import CachedImages
from fundus_tl.io import setup_logging
from fundus_tl.training import Experiment, train_fold

setup_logging(snakemake.log[0])
runtime = snakemake.config["runtime"]
train_fold(
    Experiment.from_config(snakemake.params.experiment),
    manifest=pd.read_csv(snakemake.input.manifest, sep="\t", dtype={"image": str, "patient": str}),
    images=CachedImages(snakemake.input.shards),
    fold=snakemake.params.fold,
    class_names=snakemake.params.class_names,
    weights_file=snakemake.input.weights[0] if snakemake.input.weights else None,
    model_out=snakemake.output.model,
    history_out=snakemake.output.history,
    predictions_out=snakemake.output.predictions,
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    device=runtime["device"],
    amp=runtime["amp"],
    channels_last=runtime["channels_last"],
)
