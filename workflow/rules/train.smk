rule pretrained_weights:
    output:
        "results/pretrained/{model}.pt",
    params:
        model=lambda wildcards: MODELS[wildcards.model],
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/pretrained/{model}.log",
    script:
        "../scripts/pretrained_weights.py"


rule train:
    input:
        manifest=rules.folds.output.manifest,
        shards=lambda wildcards: shard_files(wildcards.experiment, ("train", "holdout")),
        weights=weights_input,
    output:
        model="results/{experiment}/fold{fold}/model.pt",
        history="results/{experiment}/fold{fold}/history.tsv",
        predictions="results/{experiment}/fold{fold}/oof.tsv",
    params:
        experiment=lambda wildcards: training_settings(wildcards.experiment),
        fold=lambda wildcards: int(wildcards.fold) if config["folds"] > 1 else -1,
        class_names=DATA["class_folders"],
        seed=config["seed"],
    threads: config["runtime"]["train_threads"]
    resources:
        gpu=1,
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/train/{experiment}/fold{fold}.log",
    script:
        "../scripts/train.py"
