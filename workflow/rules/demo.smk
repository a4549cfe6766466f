if DEMO is not None:

    rule demo_data:
        output:
            sorted(SCAN.images["path"]),
        params:
            root=lambda wildcards: DATA["root"],
            demo=DEMO,
        conda:
            "../envs/fundus.yaml"
        log:
            "results/logs/demo_data.log",
        script:
            "../scripts/demo_data.py"
