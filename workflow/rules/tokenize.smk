# Normalized fields -> patch tokens, one store per patch size.


rule tokenize:
    message:
        "Cutting normalized fields into {wildcards.p} x {wildcards.p} patch tokens"
    input:
        fields=LAYOUT.regridded_all(),
        stats=LAYOUT.stats,
    output:
        directory(f"{RESULTS}/tokens/p{{p}}.zarr"),
    wildcard_constraints:
        p=r"\d+",
    params:
        channels=config["data"],
        code=source_hash("data/tokenize", "data/fields"),
    log:
        f"{RESULTS}/logs/tokenize/p{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize/p{{p}}.tsv"
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "seqvit tokenize {CONFIG_ARGS} --patch-size {wildcards.p} > {log} 2>&1"
