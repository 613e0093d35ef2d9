# Raw data -> regridded fields -> statistics and climatology.


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
        config=CONFIG_ARGS,
        source=config["source"],
        data=config["data"],
        code=source_hash("data/synthetic"),
    message:
        "Generating the embedded ERA5-like source (CDS netCDF layout)"
    shell:
        "seqvit synth {params.config} --quiet > {log} 2>&1"


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
        grid=config["grid"],
        method=config.get("regrid", {}).get("method", "conservative"),
        code=source_hash("data/regrid", "data/era5", "data/grids"),
    message:
        "Regridding {wildcards.group} {wildcards.year} to {params.grid} ({params.method})"
    shell:
        "seqvit regrid {input} {output} --grid {params.grid} --method {params.method} > {log} 2>&1"


rule stats:
    input:
        LAYOUT.regridded_all(),
    output:
        stats=report(
            LAYOUT.stats,
            caption="../report/stats.rst",
            category="2. Data",
        ),
        climatology=LAYOUT.climatology,
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
        config=CONFIG_ARGS,
        data=config["data"],
        splits=config["splits"],
        code=source_hash("data/stats", "data/fields"),
    message:
        "Statistics and climatology over the training years"
    shell:
        "seqvit stats {params.config} > {log} 2>&1"
