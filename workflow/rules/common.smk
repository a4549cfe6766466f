import sys
from pathlib import Path

import pandas as pd
import yaml
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.current_basedir).parent / "scripts"))

from fundus_tl.config import check_data, check_keys, check_scan, resolve_experiment  # noqa: E402
from fundus_tl.dataset import Scan, scan_dataset, shard_of, write_inventories  # noqa: E402
from fundus_tl.models import slug  # noqa: E402
from fundus_tl.synthetic import demo_scan  # noqa: E402


SCHEMA = Path(workflow.current_basedir).parent / "schemas" / "config.schema.yaml"
check_keys(config, yaml.safe_load(SCHEMA.read_text()))
validate(config, schema=str(SCHEMA))

DATA = config["data"]
DEMO = config.get("demo")
# `snakemake --lint` reads the rules only: it needs no data, so an unset data.root is fine there.
LINTING = "--lint" in sys.argv
if not LINTING:
    check_data(DATA, generated=DEMO is not None)
SHARDS = config["cache"]["shards"]
SPLITS = ("train", "holdout", "test")


def _experiments_of_configfiles() -> list[str]:
    """Experiments named in --configfile files: they replace the examples of config/config.yaml."""
    names = []
    for path in workflow.overwrite_configfiles:
        names += [name for name in (yaml.safe_load(Path(path).read_text()) or {}).get("experiments") or {}]
    return list(dict.fromkeys(names))


_selected = config.get("run_experiments") or _experiments_of_configfiles() or list(config["experiments"])
for _name in _selected:
    if _name not in config["experiments"]:
        raise ValueError(
            f"run_experiments: '{_name}' is not an entry of experiments: ({', '.join(config['experiments'])})"
        )
EXPERIMENTS = {
    name: resolve_experiment(name, config["experiments"][name], len(DATA["class_folders"])) for name in _selected
}
MODELS = {slug(entry["model"]): entry["model"] for entry in EXPERIMENTS.values()}


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),
    fold=r"\d+",
    size=r"\d+",
    prep="none|crop|graham",
    split="|".join(SPLITS),
    shard=r"\d{3}",
    model="|".join(MODELS),


def _scan() -> Scan:
    """Image candidates known at parse time: planned demo files, or a scan of the data folders."""
    if DEMO is not None:
        return demo_scan(DATA["root"], DEMO)
    return Scan() if LINTING else scan_dataset(DATA)


SCAN = _scan()
if DEMO is None and not LINTING:
    check_scan(SCAN.images, SCAN.skipped, DATA)
INVENTORY_DIR = "results/data/inventory"
# Only the main Snakemake process writes the inventories; a cluster job re-reads the Snakefile
# and must see the files its submitter planned with.
if workflow.is_main_process and not LINTING:
    write_inventories(SCAN.images, INVENTORY_DIR, SHARDS)


def cache_dir(experiment: str) -> str:
    entry = EXPERIMENTS[experiment]
    return f"results/cache/{entry['image_size']}px-{entry.get('preprocessing', 'none')}"


def shard_files(experiment: str, splits: tuple[str, ...]) -> list[str]:
    """Cache shard arrays of `splits` at the experiment's input size and preprocessing."""
    present = set(SCAN.images["split"])
    return [
        f"{cache_dir(experiment)}/{split}/shard-{shard:03d}.npy"
        for split in splits
        if split in present
        for shard in range(SHARDS)
    ]


def inventory_files(splits: tuple[str, ...]) -> list[str]:
    """The shard inventories of `splits` (see fundus_tl.dataset.write_inventories)."""
    present = set(SCAN.images["split"])
    return [
        f"{INVENTORY_DIR}/{split}/shard-{shard:03d}.tsv" for split in splits if split in present for shard in range(SHARDS)
    ]


def planned_demo_images(splits: tuple[str, ...], shard: int | None = None) -> list[str]:
    """Demo images of `splits` (one shard, or all): outputs of demo_data, so it runs first; none for real data."""
    if DEMO is None:
        return []
    images = SCAN.images
    chosen = images["split"].isin(splits)
    if shard is not None:
        chosen &= images["key"].map(lambda key: shard_of(key, SHARDS)) == shard
    return sorted(images.loc[chosen, "path"])


def shard_inputs(wildcards) -> dict[str, str | list[str]]:
    """A cache shard depends on its inventory, not on every image in it: the DAG stays small."""
    return {
        "inventory": f"{INVENTORY_DIR}/{wildcards.split}/shard-{wildcards.shard}.tsv",
        "images": planned_demo_images((wildcards.split,), int(wildcards.shard)),
    }


EVALUATION_KEYS = ("expected_grade",)  # read by evaluation only


def training_settings(experiment: str) -> dict:
    """An experiment's entry without the keys only evaluation reads: editing those retrains nothing."""
    return {key: value for key, value in EXPERIMENTS[experiment].items() if key not in EVALUATION_KEYS}


def fold_ids() -> list[int]:
    return list(range(max(config["folds"], 1)))


def data_params() -> dict:
    """The data keys that decide labels and folds (not test_dir: new test images retrain nothing)."""
    return {key: value for key, value in DATA.items() if key != "test_dir"}


def labelled_inputs(wildcards) -> list[str]:
    """What the fold manifest depends on: the train and holdout inventories, and the labels CSV."""
    files = inventory_files(("train", "holdout")) + planned_demo_images(("train", "holdout"))
    if DATA["layout"] == "csv":
        files.append(DATA["labels_csv"])
    return files


def weights_input(wildcards) -> list[str]:
    """Pretrained weights a training job starts from: fetched once per model, a file, or none."""
    entry = EXPERIMENTS[wildcards.experiment]
    weights = entry.get("weights", "imagenet")
    if weights == "imagenet":
        return [f"results/pretrained/{slug(entry['model'])}.pt"]
    if weights in ("none", None):
        return []
    return [weights]


def fold_outputs(experiment: str, name: str) -> list[str]:
    return [f"results/{experiment}/fold{fold}/{name}" for fold in fold_ids()]


def final_outputs() -> list[str]:
    targets = ["results/data/skipped.tsv", "results/leaderboard.tsv"]
    for name in EXPERIMENTS:
        targets.append(f"results/{name}/summary.json")
        if DATA.get("test_dir"):
            targets.append(f"results/{name}/predictions.csv")
    return targets


def print_headline(leaderboard: str) -> None:
    """After a successful run, the numbers users look for first."""
    if not Path(leaderboard).exists():
        return
    table = pd.read_csv(leaderboard, sep="\t")
    columns = ["experiment", "model", "oof_qwk", "oof_accuracy", "holdout_qwk", "holdout_accuracy", "training_minutes"]
    print("\nResults (results/<experiment>/summary.json, results/leaderboard.tsv):")
    print(table.reindex(columns=columns).to_string(index=False, na_rep="-", float_format=lambda value: f"{value:.3f}"))
