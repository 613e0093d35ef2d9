"""The provenance bundle under <results>/provenance: a Workflow Run RO-Crate, methods.md, LaTeX tables.

The crate (https://w3id.org/ro/wfrun/provenance/0.5, built with the `rocrate` library) holds:

* the Snakefile as the main ComputationalWorkflow, one HowToStep and SoftwareApplication per rule;
* one CreateAction per Snakemake job, read from Snakemake's job records (.snakemake/metadata:
  rule, inputs, params, start and end, external job id = Slurm job id under the Slurm executor),
  with every input and output file by sha256 and size, the host (only when asked for:
  record_hosts, `seqvit provenance --record-hosts`), and the job's benchmark
  (results/benchmarks/...tsv: wall seconds, max RSS, CPU time) when it has one; a ControlAction
  per job and an OrganizeAction for Snakemake tie them to the steps;
* the config files and the resolved config, git commit and dirty state, the remote when it is a
  URL (a local path says nothing to a reader and tells where the checkout lies), package versions,
  the hardware of the machine that builds the crate (environment.json; methods.md describes the
  training jobs from what they recorded), the CDS requests (raw/manifest/*.json and the request plan);
* methods.md and tables/*.tex (also part of the crate).

Files outside the provenance folder are referenced by their path relative to it (../eval/...).
No credential is ever written: nothing is read from the environment except a fixed list of
non-secret facts, and every text written is checked against the CDS key (CDSAPI_KEY, CDSAPI_RC,
~/.cdsapirc) and refused if it contains it.
"""

from __future__ import annotations

import ast
import importlib.metadata as im
import json
import os
import shutil
from pathlib import Path

import yaml

from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.provenance.record import (
    benchmark_for,
    check_no_secret,
    environment,
    iso_time,
    known_secrets,
    sha256_path,
    snakemake_jobs,
)

PROFILES = {
    "process": "https://w3id.org/ro/wfrun/process/0.5",
    "workflow": "https://w3id.org/ro/wfrun/workflow/0.5",
    "provenance": "https://w3id.org/ro/wfrun/provenance/0.5",
    "wroc": "https://w3id.org/workflowhub/workflow-ro-crate/1.0",
}
# ---------------------------------------------------------------- the crate


def _param_value(value) -> str:
    """A job's param as the crate shows it: Snakemake records each as its Python repr; give a string
    as itself and anything else as JSON (a repr that is not a literal stays as recorded)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def build_provenance(
    cfg: dict,
    layout,
    config_paths: list[Path],
    snakemake_dir: Path,
    validate: bool = True,
    workdir: Path | None = None,
    record_hosts: bool = False,
    snakefile: Path | None = None,
) -> Path:
    """Write <results>/provenance/{ro-crate-metadata.json, methods.md, tables/*.tex, ...}; return the folder.

    snakefile: the workflow's main Snakefile (default: ./Snakefile, where Snakemake runs); it, the
    rules beside it in workflow/ and its checkout's git state go into the crate.

    record_hosts: also record the host name of this machine and of each local job (off by default:
    a bundle meant for publication should not name the machines it ran on).
    """
    from seqvit.data.stats import climatology_years
    from seqvit.provenance import methods, tables

    metrics = Path(layout.eval_dir) / "metrics.csv"
    if not metrics.exists():  # the tables and methods.md are built from the scores
        raise SeqvitError(f"{metrics}: scores not found; run the evaluate stage first")
    workdir = Path(workdir or Path.cwd()).resolve()
    snakefile = Path(snakefile or workdir / "Snakefile").resolve()
    if not snakefile.is_file():
        raise SeqvitError(
            f"{snakefile}: the workflow's Snakefile was not found; pass it with --snakefile "
            "(the workflow rule passes the one Snakemake runs)"
        )
    secrets = known_secrets()
    out = Path(layout.root) / "provenance"
    env = environment(snakefile.parent, record_hosts)
    jobs = snakemake_jobs(snakemake_dir, layout.root, workdir)

    # Build in a temporary folder, rename into place at the end: complete or absent.
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "tables").mkdir()
        written_tables = tables.write_tables(
            layout.eval_dir,
            tmp / "tables",
            cfg["splits"]["test"],
            n_times=_n_times(layout.eval_dir),
            climatology_years=climatology_years(cfg),
        )
        training = methods.training_record(cfg, layout, jobs, workdir)
        methods_md = methods.methods_text(cfg, env, layout.eval_dir, n_jobs=len(jobs), training=training)
        check_no_secret(methods_md, "methods.md", secrets)
        (tmp / "methods.md").write_text(methods_md)
        env_text = json.dumps(env, indent=2, default=str)
        check_no_secret(env_text, "environment.json", secrets)
        (tmp / "environment.json").write_text(env_text)
        resolved = yaml.safe_dump(cfg, sort_keys=False)
        check_no_secret(resolved, "config.resolved.yaml", secrets)
        (tmp / "config.resolved.yaml").write_text(resolved)
        requests = _cds_requests(cfg, layout)
        req_text = json.dumps(requests, indent=2, default=str)
        check_no_secret(req_text, "cds_requests.json", secrets)
        (tmp / "cds_requests.json").write_text(req_text)

        crate = _crate(cfg, layout, config_paths, jobs, env, written_tables, tmp, workdir, snakefile)
        crate.metadata.write(tmp)  # the files listed above are already in place; only the metadata is written
        text = (tmp / "ro-crate-metadata.json").read_text()
        check_no_secret(text, "ro-crate-metadata.json", secrets)
        for path in tmp.rglob("*"):
            if path.is_file():
                check_no_secret(path.read_text(errors="replace"), str(path.relative_to(tmp)), secrets)
        if validate:
            report = validate_crate(tmp)
            (tmp / "validation.txt").write_text(report["text"])
            if report["ok"] is False:
                raise SeqvitError(f"{out}: the RO-Crate validator found errors:\n{report['text'][-3000:]}")
    return out


def _n_times(eval_dir: Path):
    import pandas as pd

    path = Path(eval_dir) / "metrics.csv"
    return int(pd.read_csv(path)["n_times"].max()) if path.exists() else None


def _cds_requests(cfg: dict, layout) -> dict:
    """The requests sent (manifests written by the download stage) or planned, with no credential."""
    kind = layout.source_kind()
    out = {"source": kind, "dataset_requests": [], "manifests": []}
    if kind == "synthetic":
        out["note"] = "embedded synthetic source: nothing was requested from the CDS"
        return out
    try:
        out["dataset_requests"] = [r.to_json() for r in layout.raw_requests().values()]
    except Exception as exc:  # the plan is informational; the manifests are the record
        out["plan_error"] = str(exc)
    manifest_dir = layout.raw_dir / "manifest"
    for path in sorted(manifest_dir.rglob("*.json")) if manifest_dir.is_dir() else []:
        try:
            out["manifests"].append({"path": str(path.relative_to(layout.root)), **json.loads(path.read_text())})
        except ValueError:
            continue
    return out


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()


def _crate(cfg, layout, config_paths, jobs, env, written_tables, crate_dir: Path, workdir: Path, snakefile: Path):
    from rocrate.model.contextentity import ContextEntity
    from rocrate.model.softwareapplication import SoftwareApplication
    from rocrate.rocrate import ROCrate

    final_dir = (workdir / layout.root / "provenance").resolve()
    crate = ROCrate(version="1.1")  # the Workflow Run Crate profiles 0.5 are defined over RO-Crate 1.1
    root = crate.root_dataset
    root["name"] = f"seqvit workflow run: {cfg.get('experiment', 'experiment')}"
    root["description"] = (
        "Workflow Run RO-Crate of a seqvit run (sequence-length scaling of a ViT on ERA5-like data, after "
        "Tsaris et al., arXiv:2405.15780): one action per Snakemake job with checksummed inputs and outputs."
    )
    root["datePublished"] = env["recorded"]
    root["license"] = "https://spdx.org/licenses/MIT"
    for key in ("process", "workflow", "provenance", "wroc"):
        profile = crate.add(
            ContextEntity(
                crate,
                PROFILES[key],
                properties={
                    "@type": "CreativeWork",
                    "name": f"{key} profile",
                    "version": PROFILES[key].rsplit("/", 1)[-1],
                },
            )
        )
        root.append_to("conformsTo", profile)

    files: dict[str, object] = {}

    def file_entity(path_str: str, kind: str = "File"):
        """A File/Dataset entity for a workflow file, by its path relative to the crate folder."""
        abs_path = (workdir / path_str).resolve()
        rel = _rel(abs_path, final_dir)
        if rel in files:
            return files[rel]
        props: dict[str, str | None] = {"name": path_str}  # dateModified: None for a zero mtime
        if abs_path.exists():
            digest, size = sha256_path(abs_path)
            props.update(sha256=digest, contentSize=str(size))
            props["dateModified"] = iso_time(abs_path.stat().st_mtime)
            if abs_path.is_dir():
                props["description"] = (
                    "folder; sha256 over its files' relative paths and sha256 (seqvit.provenance.crate.sha256_path)"
                )
        entity = (crate.add_dataset if abs_path.is_dir() else crate.add_file)(
            dest_path=rel + ("/" if abs_path.is_dir() else ""), properties=props
        )
        files[rel] = entity
        return entity

    # the workflow definition, copied into the crate (workflow/): Snakefile, rules, schema, captions
    workflow_dir = snakefile.parent
    wf_files = (
        [snakefile]
        + sorted((workflow_dir / "workflow").rglob("*.smk"))
        + sorted((workflow_dir / "workflow").rglob("*.yaml"))
        + sorted((workflow_dir / "workflow").rglob("*.rst"))
    )
    for src in wf_files:
        dest = crate_dir / "workflow" / src.relative_to(workflow_dir if src == snakefile else workflow_dir / "workflow")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    wf = crate.add_workflow(
        dest_path="workflow/Snakefile",
        main=True,
        lang="snakemake",
        lang_version=env["packages"].get("snakemake"),
        properties={
            "name": "seqvit Snakefile",
            "sha256": sha256_path(snakefile)[0],
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow", "HowTo"],
        },
    )
    for src in wf_files[1:]:
        rel = src.relative_to(workflow_dir / "workflow").as_posix()
        # Included by the Snakefile; the workflow's hasPart lists only the tools its actions ran (the rules).
        crate.add_file(dest_path=f"workflow/{rel}", properties={"name": rel, "sha256": sha256_path(src)[0]})
    engine = crate.add(
        SoftwareApplication(
            crate,
            "https://snakemake.github.io",
            properties={"name": "Snakemake", "version": env["packages"].get("snakemake", "")},
        )
    )
    for name, version in env["packages"].items():
        app = crate.add(
            ContextEntity(
                crate,
                f"#software-{name}",
                properties={"@type": "SoftwareApplication", "name": name, "version": version},
            )
        )
        wf.append_to("softwareRequirements", app)

    steps, tools = {}, {}
    for position, rule in enumerate(dict.fromkeys(j.get("rule") or "unknown" for j in jobs)):
        tool = crate.add(
            ContextEntity(
                crate,
                f"#rule-{rule}",
                properties={
                    "@type": "SoftwareApplication",
                    "name": f"rule {rule}",
                    "description": f"Snakemake rule {rule} (calls `seqvit`)",
                },
            )
        )
        step = crate.add(
            ContextEntity(
                crate,
                f"#step-{rule}",
                properties={
                    "@type": "HowToStep",
                    "name": rule,
                    "position": str(position),
                    "workExample": {"@id": tool.id},
                },
            )
        )
        wf.append_to("step", step)
        wf.append_to("hasPart", tool)
        steps[rule], tools[rule] = step, tool

    # config and the bundle's own files
    configs = []
    for path in config_paths:
        entity = crate.add_file(
            dest_path=_rel(path, final_dir),
            properties={
                "name": f"config {Path(path).name}",
                "encodingFormat": "application/yaml",
                **(dict(zip(("sha256", "contentSize"), map(str, sha256_path(path)))) if Path(path).exists() else {}),
            },
        )
        configs.append(entity)
    own = {}
    for name, desc, fmt in [
        (
            "config.resolved.yaml",
            "the configuration as the run used it (all files and overrides merged)",
            "application/yaml",
        ),
        (
            "environment.json",
            "Python and package versions, hardware of the machine that ran seqvit provenance, "
            "git commit and dirty state",
            "application/json",
        ),
        (
            "cds_requests.json",
            "the CDS requests (download manifests with request ids and sha256), or a note that none was sent",
            "application/json",
        ),
        ("methods.md", "editable methods paragraph with citations", "text/markdown"),
    ]:
        own[name] = crate.add_file(
            dest_path=name,
            properties={
                "name": name,
                "description": desc,
                "encodingFormat": fmt,
                "sha256": sha256_path(crate_dir / name)[0],
            },
        )
    for path in written_tables:
        crate.add_file(
            dest_path=f"tables/{path.name}",
            properties={
                "name": path.name,
                "description": "LaTeX booktabs table of the results",
                "encodingFormat": "application/x-tex",
                "sha256": sha256_path(path)[0],
            },
        )

    # one CreateAction (+ ControlAction) per job
    host = env["hardware"].get("host")  # None unless record_hosts
    actions, controls, all_outputs = [], [], []
    for i, job in enumerate(jobs, start=1):
        rule = job.get("rule") or "unknown"
        inputs = [file_entity(p) for p in job.get("input") or []]
        outputs = [file_entity(p) for p in job["output"]]
        all_outputs.extend(outputs)
        params = []
        for k, value in enumerate(job.get("params") or []):
            params.append(
                crate.add(
                    ContextEntity(
                        crate,
                        f"#job-{i}-param-{k}",
                        properties={
                            "@type": "PropertyValue",
                            "name": f"{rule} param {k}",
                            "value": _param_value(value),
                        },
                    )
                )
            )
        slurm = job.get("external_jobid")
        bench = benchmark_for(job, workdir)
        extra = {
            "host": (f"a Slurm node (job {slurm}; see sacct)" if slurm else host) if host else None,
            "slurm_job_id": slurm,
            "job_hash": job.get("job_hash"),
            "conda_env": job.get("conda_env"),
            "software_stack_hash": job.get("software_stack_hash"),
        }
        if bench:
            extra.update({f"benchmark_{k}": v for k, v in bench.items()})
        for key, v in extra.items():
            if v is None:
                continue
            params.append(
                crate.add(
                    ContextEntity(
                        crate, f"#job-{i}-{key}", properties={"@type": "PropertyValue", "name": key, "value": str(v)}
                    )
                )
            )
        props = {
            "name": f"{rule} job {i}: {', '.join(Path(o).name for o in job['output'][:3])}{' ...' if len(job['output']) > 3 else ''}",
            "startTime": iso_time(job.get("starttime")),
            "endTime": iso_time(job.get("endtime")),
            "actionStatus": "http://schema.org/CompletedActionStatus",
        }
        if job.get("shellcmd"):
            props["description"] = job["shellcmd"]
        action = crate.add_action(
            tools[rule],
            identifier=f"#job-{i}",
            object=inputs + params[: len(job.get("params") or [])],
            result=outputs,
            properties={k: v for k, v in props.items() if v},
        )
        extra_props = params[len(job.get("params") or []) :]
        if extra_props:
            action["additionalProperty"] = extra_props
        actions.append(action)
        controls.append(
            crate.add(
                ContextEntity(
                    crate,
                    f"#control-{i}",
                    properties={
                        "@type": "ControlAction",
                        "name": f"orchestrate {rule} job {i}",
                        "instrument": {"@id": steps[rule].id},
                        "object": {"@id": action.id},
                    },
                )
            )
        )

    starts = [j["starttime"] for j in jobs if j.get("starttime")]
    ends = [j["endtime"] for j in jobs if j.get("endtime")]
    hw = env["hardware"]
    hw_props = [
        crate.add(
            ContextEntity(crate, f"#hardware-{k}", properties={"@type": "PropertyValue", "name": k, "value": str(v)})
        )
        for k, v in hw.items()
        if v is not None
    ]
    git = env["git"]
    git_props = [
        crate.add(
            ContextEntity(
                crate, f"#git-{k}", properties={"@type": "PropertyValue", "name": f"git {k}", "value": str(v)}
            )
        )
        for k, v in (("commit", git.get("commit")), ("dirty", git.get("dirty")), ("remote", git.get("remote")))
        if v is not None
    ]
    run = crate.add_action(
        wf,
        identifier="#run",
        object=configs + [own["config.resolved.yaml"]],
        result=_final_outputs(files, final_dir, layout, workdir),
        properties={
            "name": f"seqvit run of {cfg.get('experiment', '')} ({len(jobs)} jobs)",
            "startTime": iso_time(min(starts)) if starts else env["recorded"],
            "endTime": iso_time(max(ends)) if ends else env["recorded"],
        },
    )
    run["additionalProperty"] = hw_props + git_props
    run["description"] = (
        f"machine that built this crate (not necessarily one that ran the jobs): {hw['cpu']} "
        f"x{hw['cpu_count']}, {hw.get('memory_gb')} GB, GPUs: {hw.get('gpus') or 'none'}; "
        f"git {git.get('commit')} dirty={git.get('dirty')}"
    )
    crate.add(
        ContextEntity(
            crate,
            "#organize",
            properties={
                "@type": "OrganizeAction",
                "name": "Snakemake run",
                "instrument": {"@id": engine.id},
                "object": [{"@id": c.id} for c in controls],
                "result": {"@id": run.id},
                "startTime": run.get("startTime"),
                "endTime": run.get("endTime"),
            },
        )
    )
    root["mentions"] = [{"@id": run.id}]
    return crate


def _final_outputs(files: dict, final_dir: Path, layout, workdir: Path) -> list:
    """The run's headline results: everything under eval/ that a job produced."""
    eval_rel = _rel((workdir / layout.eval_dir).resolve(), final_dir)
    return [entity for rel, entity in files.items() if rel.startswith(eval_rel + "/")]


# ---------------------------------------------------------------- validation


def validate_crate(crate_dir: Path, profile: str = "provenance-run-crate") -> dict:
    """Run the RO-Crate validator (roc-validator) where installed; ok None when it is not or cannot run.

    The validator resolves the JSON-LD context over the network; to work offline (compute nodes,
    CI) it is given the metadata with the RO-Crate context inlined from the copy the `rocrate`
    library ships, which is the context the crate names.
    """
    try:
        from rocrate_validator import services
        from rocrate_validator.models import Severity, ValidationSettings
    except ImportError:
        return {"ok": None, "text": "roc-validator is not installed (pip install roc-validator); crate not validated\n"}
    import rocrate

    meta = json.loads((Path(crate_dir) / "ro-crate-metadata.json").read_text())
    context_file = Path(rocrate.__file__).parent / "data" / "ro-crate.jsonld"
    shipped = json.loads(context_file.read_text())
    inlined = ""
    if str(meta.get("@context", "")).startswith("https://w3id.org/ro/crate/1.") and "@context" in shipped:
        # The 1.3 context defines the terms of 1.1 with the same IRIs except the Bioschemas ones,
        # which 1.1 writes without /terms/ (https://bioschemas.org/ComputationalWorkflow).
        context = {
            term: (
                iri.replace("https://bioschemas.org/terms/", "https://bioschemas.org/", 1)
                if isinstance(iri, str)
                else iri
            )
            for term, iri in shipped["@context"].items()
        }
        if meta["@context"] == "https://w3id.org/ro/crate/1.3/context":
            context = shipped["@context"]
        meta["@context"] = context
        inlined = (
            f", context inlined (offline) from {shipped.get('@id')} as shipped by rocrate {im.version('rocrate')}"
            f"{'' if context is shipped['@context'] else ', Bioschemas terms with their RO-Crate 1.1 IRIs'}"
        )
    try:
        settings = ValidationSettings(
            rocrate_uri=str(Path(crate_dir).resolve()),
            profile_identifier=profile,
            requirement_severity=Severity.REQUIRED,
            metadata_dict=meta,
            metadata_only=True,
        )
        result = services.validate(settings)
    except Exception as exc:  # the validator itself failed (offline profile fetch, ...): say so, do not hide it
        return {"ok": None, "text": f"roc-validator could not run: {type(exc).__name__}: {exc}\n"}
    issues = list(result.get_issues())
    lines = [
        f"roc-validator {im.version('roc-validator')}, profile {profile}, severity REQUIRED{inlined}: "
        f"{'valid' if result.passed() else 'INVALID'}"
    ]
    lines += [f"- {getattr(i, 'severity', '')} {getattr(i, 'message', i)}" for i in issues]
    return {"ok": bool(result.passed()), "text": "\n".join(lines) + "\n"}
