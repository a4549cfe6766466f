rule cache_shard:
    input:
        unpack(shard_inputs),
    output:
        array="results/cache/{size}px-{prep}/{split}/shard-{shard}.npy",
        index="results/cache/{size}px-{prep}/{split}/shard-{shard}.tsv",
    params:
        size=lambda wildcards: int(wildcards.size),
        preprocessing=lambda wildcards: wildcards.prep,
    threads: config["cache"]["threads"]
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/cache/{size}px-{prep}/{split}/shard-{shard}.log",
    script:
        "../scripts/cache_shard.py"


rule skip_report:
    input:
        indexes=lambda wildcards: sorted(
            {
                str(Path(path).with_suffix(".tsv"))
                for name in EXPERIMENTS
                for path in shard_files(name, SPLITS)
            }
        ),
    output:
        skipped="results/data/skipped.tsv",
        duplicates="results/data/duplicates.tsv",
    params:
        scan_skipped=SCAN.skipped[["path", "reason"]].values.tolist(),
    conda:
        "../envs/fundus.yaml"
    log:
        "results/logs/skip_report.log",
    script:
        "../scripts/skip_report.py"
