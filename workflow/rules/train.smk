# Tokens -> trained ViT -> forecasts on the test years.
# A run is vit-{variant}p{p}{seed}: variant "win-" for window attention (sweep.window), seed "-s<S>"
# when train.seeds is set (seqvit.layout names them; p stays the patch size the resources follow).

try:
    LAYOUT.check_sweep()
except SeqvitError as _error:
    raise SystemExit(f"Configuration error, nothing was run:\n{_error}")


rule train:
    input:
        f"{RESULTS}/tokens/p{{p}}.zarr",
    output:
        model=f"{RESULTS}/train/{{variant}}p{{p}}{{seed}}/model.pt",
        metrics=report(
            f"{RESULTS}/train/{{variant}}p{{p}}{{seed}}/metrics.csv",
            caption="../report/train_metrics.rst",
            category="3. Training",
            labels={"run": "vit-{variant}p{p}{seed}"},
        ),
    log:
        f"{RESULTS}/logs/train/{{variant}}p{{p}}{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{variant}}p{{p}}{{seed}}.tsv"
    wildcard_constraints:
        variant=r"(?:win-)?",
        p=r"\d+",
        seed=r"(?:-s\d+)?",
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
        name=lambda wc: f"vit-{wc.variant}p{wc.p}{wc.seed}",
        # the run's own model: window attention for window runs
        model=lambda wc: LAYOUT.run_config(f"vit-{wc.variant}p{wc.p}{wc.seed}")["model"],
        parallel=config.get("parallel", {}),
        # walltime keys only size the Slurm jobs: changing them retrains nothing
        cluster={
            k: v
            for k, v in config.get("cluster", {}).items()
            if k not in WALLTIME_KEYS
        },
        # the run's seed; train.seeds itself (which runs exist) retrains none of them
        train=lambda wc: {
            k: v
            for k, v in LAYOUT.run_config(f"vit-{wc.variant}p{wc.p}{wc.seed}")[
                "train"
            ].items()
            if k in TRAIN_SETTINGS and k != "seeds"
        },
        splits=config["splits"],
        code=stage_hash("train.engine", "train.slurm"),
    message:
        "Training the ViT {params.name} on {wildcards.p} x {wildcards.p} patches (on Slurm: {resources.sbatch})"
    shell:
        "{params.seqvit} train --config {params.config:q} {params.run} --patch-size {wildcards.p} --run-name {params.name} --quiet --restart-if-changed > {log:q} 2>&1"


rule predict:
    input:
        model=f"{RESULTS}/train/{{variant}}p{{p}}{{seed}}/model.pt",
        tokens=f"{RESULTS}/tokens/p{{p}}.zarr",
        stats=LAYOUT.stats,
    output:
        f"{RESULTS}/predictions/vit-{{variant}}p{{p}}{{seed}}.nc",
    log:
        f"{RESULTS}/logs/predict/vit-{{variant}}p{{p}}{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/vit-{{variant}}p{{p}}{{seed}}.tsv"
    wildcard_constraints:
        variant=r"(?:win-)?",
        p=r"\d+",
        seed=r"(?:-s\d+)?",
    conda:
        "../../envs/seqvit.yaml"
    resources:
        # the nodes and tasks of the run's training job (parallel.*, cluster.*), cluster.predict_minutes
        **PREDICT_RESOURCES,
    params:
        config=CONFIG,
        # the same launcher as training: srun on Slurm, torchrun for several local ranks
        seqvit=lambda wc: seqvit_command(config, int(wc.p)),
        evaluate=config["evaluate"],
        splits=config["splits"],
        parallel=config.get("parallel", {}),
        code=stage_hash("train.predict"),
        name=lambda wc: f"vit-{wc.variant}p{wc.p}{wc.seed}",
    message:
        "Forecasting the test years with the ViT {params.name} (on Slurm: {resources.sbatch})"
    shell:
        "{params.seqvit} predict --config {params.config:q} --patch-size {wildcards.p} --run-name {params.name} > {log:q} 2>&1"
