rule evaluate:
    input:
        manifest="results/data/folds.tsv",
        models=lambda wildcards: fold_outputs(wildcards.experiment, "model.pt"),
        predictions=lambda wildcards: fold_outputs(wildcards.experiment, "oof.tsv"),
        shards=lambda wildcards: shard_files(wildcards.experiment, ("train", "holdout")),
    output:
        summary="results/{experiment}/summary.json",
        holdout="results/{experiment}/holdout_predictions.csv",
    params:
        experiment=lambda wildcards: wildcards.experiment,
        batch_size=lambda wildcards: EXPERIMENTS[wildcards.experiment]["batch_size"],
    threads: config["runtime"]["train_threads"]
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/evaluate/{experiment}.log",
    script:
        "../scripts/evaluate.py"


rule predict:
    input:
        models=lambda wildcards: fold_outputs(wildcards.experiment, "model.pt"),
        shards=lambda wildcards: shard_files(wildcards.experiment, ("test",)),
    output:
        "results/{experiment}/predictions.csv",
    params:
        batch_size=lambda wildcards: EXPERIMENTS[wildcards.experiment]["batch_size"],
    threads: config["runtime"]["train_threads"]
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/predict/{experiment}.log",
    script:
        "../scripts/predict.py"
