rule folds:
    input:
        labelled_image_files,
    output:
        "results/data/folds.tsv",
    params:
        data=data_params(),
        folds=config["folds"],
        seed=config["seed"],
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/folds.log",
    script:
        "../scripts/folds.py"
