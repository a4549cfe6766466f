if DEMO is not None:

    rule demo_data:
        output:
            sorted(SCAN.images["path"]),
        params:
            root=DATA["root"],
            demo=DEMO,
        log:
            "results/logs/demo_data.log",
        script:
            "../scripts/demo_data.py"
