# Tokens -> trained ViT -> forecasts on the test years.


rule train:
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
    log:
        f"{RESULTS}/logs/train/p{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/p{{p}}.tsv"
    wildcard_constraints:
        p=r"\d+",
    conda:
        "../../envs/seqvit.yaml"
    threads: config["train"].get("threads", 2)
    resources:
        # nodes, tasks, partition, QoS and walltime follow parallel.* and cluster.* of the config
        **TRAIN_RESOURCES,
    params:
        config=CONFIG,
        seqvit=lambda wc: seqvit_command(config, int(wc.p)),
        run=lambda wc: run_args(int(wc.p)),
        # the job's shape without its walltime (a new prediction retrains nothing); provenance reads it
        sbatch=lambda wc: sbatch_layout(config, int(wc.p)),
        model=config["model"],
        parallel=config.get("parallel", {}),
        # walltime keys only size the Slurm jobs: changing them retrains nothing
        cluster={
            k: v
            for k, v in config.get("cluster", {}).items()
            if k not in ("train_minutes", "walltime_margin", "startup_minutes")
        },
        train=TRAIN_SETTINGS,
        splits=config["splits"],
        code=stage_hash("train.engine", "train.slurm"),
    message:
        "Training the ViT on {wildcards.p} x {wildcards.p} patches (on Slurm: {resources.sbatch})"
    shell:
        "{params.seqvit} train --config {params.config:q} {params.run} --patch-size {wildcards.p} --quiet --restart-if-changed > {log:q} 2>&1"


rule predict:
    input:
        model=f"{RESULTS}/train/p{{p}}/model.pt",
        tokens=f"{RESULTS}/tokens/p{{p}}.zarr",
        stats=LAYOUT.stats,
    output:
        f"{RESULTS}/predictions/vit-p{{p}}.nc",
    log:
        f"{RESULTS}/logs/predict/vit-p{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/vit-p{{p}}.tsv"
    wildcard_constraints:
        p=r"\d+",
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=CONFIG,
        evaluate=config["evaluate"],
        splits=config["splits"],
        code=stage_hash("train.predict"),
    message:
        "Forecasting the test years with the ViT (p={wildcards.p})"
    shell:
        "seqvit predict --config {params.config:q} --patch-size {wildcards.p} > {log:q} 2>&1"
