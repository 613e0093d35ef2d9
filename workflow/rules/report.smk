# Provenance for publications: Workflow Run RO-Crate, methods paragraph, LaTeX tables.


# Runs last (it needs every result) and reads Snakemake's job records (.snakemake/metadata) of the
# jobs before it; localrule: it is quick and needs the working directory Snakemake runs in.
localrules:
    provenance,


rule provenance:
    input:
        rules.evaluate.output,
        train_logs=list(LAYOUT.train_logs().values()),
    output:
        crate=report(
            f"{RESULTS}/provenance/ro-crate-metadata.json",
            caption="../report/provenance.rst",
            category="6. Provenance",
        ),
        methods=report(
            f"{RESULTS}/provenance/methods.md",
            caption="../report/methods.rst",
            category="6. Provenance",
        ),
        tables=report(
            f"{RESULTS}/provenance/tables/sequence_length.tex",
            caption="../report/latex_tables.rst",
            category="6. Provenance",
        ),
    log:
        f"{RESULTS}/logs/provenance.log",
    benchmark:
        f"{RESULTS}/benchmarks/provenance.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        config=CONFIG,
        # it records the whole configuration (but not where the results folder is)
        settings={k: v for k, v in config.items() if k != "results"},
        code=stage_hash("provenance.crate"),
    message:
        "Writing the provenance bundle (RO-Crate, methods.md, LaTeX tables)"
    shell:
        "seqvit provenance --config {params.config:q} > {log:q} 2>&1"
