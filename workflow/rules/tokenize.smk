# Normalized fields -> patch tokens, one store per patch size.


rule tokenize:
    input:
        fields=LAYOUT.regridded_all(),
        stats=LAYOUT.stats,
    output:
        directory(f"{RESULTS}/tokens/p{{p}}.zarr"),
    log:
        f"{RESULTS}/logs/tokenize/p{{p}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tokenize/p{{p}}.tsv"
    wildcard_constraints:
        p=r"\d+",
    conda:
        "../../envs/seqvit.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        config=CONFIG,
        channels=config["data"],
        # token chunks per sample: a sequence-parallel rank reads only its segment
        sp_segments=config["tokenize"].get("sp_segments", 8),
        code=stage_hash("data.tokenize"),
    message:
        "Cutting normalized fields into {wildcards.p} x {wildcards.p} patch tokens"
    shell:
        "seqvit tokenize --config {params.config:q} --patch-size {wildcards.p} > {log:q} 2>&1"
