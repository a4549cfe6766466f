"""Snakemake entry: stratified, patient-grouped fold manifest and its class-balance picture."""

from fundus_tl.dataset import scan_dataset
from fundus_tl.folds import make_folds, usable_images
from fundus_tl.io import atomic_path, setup_logging
from fundus_tl.plots import plot_class_balance

setup_logging(snakemake.log[0])
data = snakemake.params.data
scan = scan_dataset(data)
manifest = make_folds(
    usable_images(scan.images),
    data["class_folders"],
    snakemake.params.folds,
    snakemake.params.seed,
    data["holdout_fraction"],
)
with atomic_path(snakemake.output.manifest) as tmp:
    manifest.to_csv(tmp, sep="\t", index=False)
plot_class_balance(manifest, data["class_folders"], snakemake.output.balance)
