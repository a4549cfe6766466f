rule folds:
    input:
        labelled_image_files,
    output:
        "results/data/folds.tsv",
    params:
        data=data_params(),
        folds=config["folds"],
        seed=config["seed"],
    log:
        "results/logs/folds.log",
    script:
        "../scripts/folds.py"
