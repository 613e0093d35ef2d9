# Baseline forecasts, scores of every model and baseline, figures.


rule baseline:
    input:
        fields=LAYOUT.regridded_all(),
        stats=LAYOUT.stats,
        climatology=LAYOUT.climatology,
    output:
        f"{RESULTS}/predictions/{{name}}.nc",
    log:
        f"{RESULTS}/logs/baseline/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline/{{name}}.tsv"
    wildcard_constraints:
        name="climatology|persistence|linear",
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=6000,
        runtime=30,
    params:
        config=CONFIG,
        evaluate=config["evaluate"],
        splits=config["splits"],
        code=stage_hash("evaluate.baselines"),
    message:
        "Forecasting the test years with the {wildcards.name} baseline"
    shell:
        "seqvit baseline --config {params.config:q} --name {wildcards.name} > {log:q} 2>&1"


rule evaluate:
    input:
        predictions=[
            LAYOUT.prediction(n)
            for n in LAYOUT.model_names() + LAYOUT.baseline_names()
        ],
        fields=LAYOUT.regridded_all(),
        climatology=LAYOUT.climatology,
        train_logs=list(LAYOUT.train_logs().values()),
    output:
        metrics=report(
            f"{RESULTS}/eval/metrics.csv",
            caption="../report/metrics.rst",
            category="4. Evaluation",
        ),
        table=report(
            f"{RESULTS}/eval/rmse_table.csv",
            caption="../report/rmse_table.rst",
            category="4. Evaluation",
        ),
        figure=report(
            f"{RESULTS}/eval/rmse_vs_lead.png",
            caption="../report/rmse_vs_lead.rst",
            category="4. Evaluation",
        ),
        figure_pdf=f"{RESULTS}/eval/rmse_vs_lead.pdf",
        per_time=f"{RESULTS}/eval/per_time.nc",
        maps=report(
            f"{RESULTS}/eval/maps.png",
            caption="../report/maps.rst",
            category="4. Evaluation",
        ),
        maps_case=report(
            f"{RESULTS}/eval/maps_case.csv",
            caption="../report/maps_case.rst",
            category="4. Evaluation",
        ),
        seeds_summary=report(
            f"{RESULTS}/eval/seeds_summary.csv",
            caption="../report/seeds_summary.rst",
            category="4. Evaluation",
        ),
        windows_vs_full=report(
            f"{RESULTS}/eval/windows_vs_full.csv",
            caption="../report/windows_vs_full.rst",
            category="5. Sequence length",
        ),
        seqlen=report(
            f"{RESULTS}/eval/rmse_vs_seqlen.csv",
            caption="../report/rmse_vs_seqlen_table.rst",
            category="5. Sequence length",
        ),
        seqlen_change=report(
            f"{RESULTS}/eval/seqlen_change.csv",
            caption="../report/seqlen_change.rst",
            category="5. Sequence length",
        ),
        seqlen_figure=report(
            f"{RESULTS}/eval/rmse_vs_seqlen.png",
            caption="../report/rmse_vs_seqlen.rst",
            category="5. Sequence length",
        ),
        seqlen_figure_pdf=f"{RESULTS}/eval/rmse_vs_seqlen.pdf",
        loss_curves=report(
            f"{RESULTS}/eval/loss_curves.png",
            caption="../report/loss_curves.rst",
            category="3. Training",
        ),
        loss_curves_pdf=f"{RESULTS}/eval/loss_curves.pdf",
    log:
        f"{RESULTS}/logs/evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=CONFIG,
        evaluate=config["evaluate"],
        # the `run` column of metrics.csv
        experiment=config["experiment"],
        code=stage_hash("evaluate.report"),
    message:
        "Scoring every model and baseline on the test years"
    shell:
        "seqvit evaluate --config {params.config:q} > {log:q} 2>&1"
