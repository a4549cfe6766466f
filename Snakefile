from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/folds.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


onsuccess:
    print_headline("results/leaderboard.tsv")


rule all:
    input:
        final_outputs(),
    default_target: True
