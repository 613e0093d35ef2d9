# Raw data -> regridded fields -> statistics and climatology.

if config["source"]["kind"] == "synthetic":

    rule synth:
        output:
            LAYOUT.raw_all(),
        log:
            f"{RESULTS}/logs/synth.log",
        benchmark:
            f"{RESULTS}/benchmarks/synth.tsv"
        conda:
            "../../envs/seqvit.yaml"
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            config=CONFIG,
            source=config["source"],
            data=config["data"],
            code=stage_hash("data.synthetic"),
        message:
            "Generating the embedded ERA5-like source (CDS netCDF layout)"
        shell:
            "seqvit synth --config {params.config:q} --quiet > {log:q} 2>&1"

else:
    # One job per request file (seqvit download --config C --plan lists them). Downloads run on
    # the machine Snakemake runs on (compute nodes may have no internet), at most
    # source.max_parallel at once (resource cds_requests; --resources cds_requests=N overrides).
    # No code hash in params: editing seqvit must not fetch terabytes again; the request is the
    # param, so changing what is requested refetches exactly the files it changes.
    if "cds_requests" not in workflow.global_resources:
        workflow.register_resource(
            "cds_requests", config["source"].get("max_parallel", 4)
        )

    localrules:
        download,

    rule download:
        output:
            data=f"{RESULTS}/raw/{{group}}/{{year}}/{{part}}.nc",
            manifest=f"{RESULTS}/raw/manifest/{{group}}/{{year}}/{{part}}.json",
        log:
            f"{RESULTS}/logs/download/{{group}}/{{year}}/{{part}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/download/{{group}}/{{year}}/{{part}}.tsv"
        wildcard_constraints:
            group="single-levels|pressure-levels",
            year=r"\d{4}",
            part=r"\d{2}(_d\d{2}(-\d{2}|_h\d{2}-\d{2}))?",
        conda:
            "../../envs/seqvit.yaml"
        resources:
            cds_requests=1,
            mem_mb=2000,
            runtime=24 * 60,
        params:
            config=CONFIG,
            request=lambda wc: LAYOUT.raw_requests()[
                f"{wc.group}/{wc.year}/{wc.part}"
            ].to_json(),
        message:
            "Fetching raw ERA5 {wildcards.group}/{wildcards.year}/{wildcards.part}"
        shell:
            "seqvit download --config {params.config:q} --request {wildcards.group}/{wildcards.year}/{wildcards.part} > {log:q} 2>&1"


rule regrid:
    input:
        lambda wc: LAYOUT.raw_year(wc.group, int(wc.year)),
    output:
        f"{RESULTS}/regridded/{{group}}/{{year}}.nc",
    log:
        f"{RESULTS}/logs/regrid/{{group}}_{{year}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/regrid/{{group}}_{{year}}.tsv"
    wildcard_constraints:
        group="single-levels|pressure-levels",
        year=r"\d{4}",
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        config=CONFIG,
        grid=config["grid"],
        method=config.get("regrid", {}).get("method", "conservative"),
        code=stage_hash("data.regrid_files"),
    message:
        "Regridding {wildcards.group} {wildcards.year} to {params.grid} ({params.method})"
    shell:
        "seqvit regrid --config {params.config:q} {input:q} {output:q} --grid {params.grid} --method {params.method} > {log:q} 2>&1"


rule stats:
    input:
        LAYOUT.regridded_all(),
    output:
        report(
            LAYOUT.stats,
            caption="../report/stats.rst",
            category="2. Data",
        ),
    log:
        f"{RESULTS}/logs/stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/stats.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=CONFIG,
        data=config["data"],
        train_years=config["splits"]["train"],
        code=stage_hash("data.stats"),
    message:
        "Mean and standard deviation per channel over the training years"
    shell:
        "seqvit stats --config {params.config:q} > {log:q} 2>&1"


# Its own job: changing the climatology years reruns the baselines and the scores, not the models.
rule climatology:
    input:
        LAYOUT.regridded_all(),
    output:
        LAYOUT.climatology,
    log:
        f"{RESULTS}/logs/climatology.log",
    benchmark:
        f"{RESULTS}/benchmarks/climatology.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=CONFIG,
        data=config["data"],
        splits=config["splits"],
        stats=config.get("stats", {}),
        code=stage_hash("data.stats"),
    message:
        "Smoothed day-of-year x hour climatology"
    shell:
        "seqvit climatology --config {params.config:q} > {log:q} 2>&1"
