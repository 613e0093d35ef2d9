# Tokens -> trained ViT -> forecasts on the test years.


rule train:
    message:
        "Training the ViT on {wildcards.p} x {wildcards.p} patches"
    input:
        f"{RESULTS}/tokens/p{{p}}.zarr",
    output:
        model=f"{RESULTS}/train/p{{p}}/model.pt",
        metrics=report(
            f"{RESULTS}/train/p{{p}}/metrics.csv",
            caption="../report/train_metrics.rst",
            category="3. Training",
            labels={"patch size": "{p}"},
        ),
    wildcard_constraints:
        p=r"\d+",
    params:
        model=config["model"],
        train=config["train"],
        splits=config["splits"],
        code=source_hash("model", "train/engine", "data/loader", "parallel"),
    threads: workflow.cores
    log:
        f"{RESULTS}/logs/train/p{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/p{{p}}.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "seqvit train {CONFIG_ARGS} --patch-size {wildcards.p} --quiet > {log} 2>&1"


rule predict:
    message:
        "Forecasting the test years with the ViT (p={wildcards.p})"
    input:
        model=f"{RESULTS}/train/p{{p}}/model.pt",
        tokens=f"{RESULTS}/tokens/p{{p}}.zarr",
        stats=LAYOUT.stats,
    output:
        f"{RESULTS}/predictions/vit-p{{p}}.nc",
    wildcard_constraints:
        p=r"\d+",
    params:
        evaluate=config["evaluate"],
        splits=config["splits"],
        code=source_hash("model", "train/predict", "parallel"),
    log:
        f"{RESULTS}/logs/predict/vit-p{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/vit-p{{p}}.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "seqvit predict {CONFIG_ARGS} --patch-size {wildcards.p} > {log} 2>&1"
