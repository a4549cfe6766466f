rule evaluate:
    input:
        manifest=rules.folds.output.manifest,
        models=lambda wildcards: fold_outputs(wildcards.experiment, "model.pt"),
        predictions=lambda wildcards: fold_outputs(wildcards.experiment, "oof.tsv"),
        histories=lambda wildcards: fold_outputs(wildcards.experiment, "history.tsv"),
        shards=lambda wildcards: shard_files(wildcards.experiment, ("train", "holdout")),
    output:
        summary="results/{experiment}/summary.json",
        holdout="results/{experiment}/holdout_predictions.csv",
        confusion_oof=report(
            "results/{experiment}/plots/confusion_oof.png",
            caption="../report/confusion_oof.rst",
            category="{experiment}",
            subcategory="Out-of-fold",
        ),
        confusion_holdout=report(
            "results/{experiment}/plots/confusion_holdout.png",
            caption="../report/confusion_holdout.rst",
            category="{experiment}",
            subcategory="Holdout",
        ),
        learning_curves=report(
            "results/{experiment}/plots/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="{experiment}",
            subcategory="Training",
        ),
        roc=report(
            "results/{experiment}/plots/roc.png",
            caption="../report/roc.rst",
            category="{experiment}",
            subcategory="Holdout",
        ),
    params:
        experiment=lambda wildcards: wildcards.experiment,
        batch_size=lambda wildcards: EXPERIMENTS[wildcards.experiment]["batch_size"],
        expected_grade=lambda wildcards: EXPERIMENTS[wildcards.experiment].get("expected_grade", False),
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
        summary="results/{experiment}/summary.json",
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


rule leaderboard:
    input:
        [f"results/{name}/summary.json" for name in EXPERIMENTS],
    output:
        report(
            "results/leaderboard.tsv",
            caption="../report/leaderboard.rst",
            category="Leaderboard",
        ),
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/leaderboard.log",
    script:
        "../scripts/leaderboard.py"
