"""A stage run before the one that makes its inputs says which stage to run, without a traceback."""

from pathlib import Path

from seqvit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "config" / "config.yaml")


def test_tokenize_without_regridded_files_asks_for_the_regrid_stage(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["tokenize", "--config", DEMO, "--set", f"results={results}", "--patch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqvit tokenize: error: ") and "run the regrid stage first" in err
    # the demo has 2 groups x 4 years of regridded files, none of them there
    assert "8 of 8" in err and str(results / "regridded") in err
    assert not (results / "tokens").exists()


def test_provenance_without_scores_asks_for_the_evaluate_stage(tmp_path, capsys):
    results = tmp_path / "results"
    (tmp_path / ".snakemake" / "metadata").mkdir(parents=True)  # Snakemake has run, evaluate has not
    args = [
        "provenance",
        "--config",
        DEMO,
        "--set",
        f"results={results}",
        "--snakemake-dir",
        str(tmp_path / ".snakemake"),
    ]
    assert main([*args, "--no-validate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqvit provenance: error: ")
    assert str(results / "eval" / "metrics.csv") in err and "run the evaluate stage first" in err
    assert not (results / "provenance").exists()
