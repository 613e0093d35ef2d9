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
        config=config_args("data"),
        channels=config["data"],
        # token chunks per sample: a sequence-parallel rank reads only its segment
        sp_segments=config["tokenize"].get("sp_segments", 8),
        code=source_hash("data/tokenize", "data/fields", "data/stats"),
    message:
        "Cutting normalized fields into {wildcards.p} x {wildcards.p} patch tokens"
    shell:
        "seqvit tokenize {params.config} --set tokenize.sp_segments={params.sp_segments} --patch-size {wildcards.p} > {log} 2>&1"
