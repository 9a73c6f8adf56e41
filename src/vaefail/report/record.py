"""The run record: what ran, how long it took, and what produced each result.

Two files for the HTML report (and for a reviewer): `runtimes.csv`, one row per job with
Snakemake's benchmark (wall seconds, peak memory, CPU seconds), and `provenance.json`, the
resolved settings with every distinct code version, package set, device and seed range
recorded in the per-restart result files.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from ..config import settings_hash
from ..files import read_json, write_bytes, write_json
from ..provenance import code_version


def job_runtimes(outdir: Path) -> pd.DataFrame:
    """Every benchmark file under `outdir/benchmarks`: benchmarks/<stage>/<experiment>/<dataset>/<setting>.tsv."""
    rows = []
    for path in sorted((outdir / "benchmarks").rglob("*.tsv")):
        bench = pd.read_csv(path, sep="\t").iloc[-1]  # the last line is the run that made the outputs
        parts = path.relative_to(outdir / "benchmarks").with_suffix("").parts
        rows.append({"stage": parts[0], "job": "/".join(parts[1:]), "seconds": float(bench["s"]),
                     "max_rss_mb": float(bench["max_rss"]), "cpu_seconds": float(bench["cpu_time"])})
    return pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mb", "cpu_seconds"])


def result_provenance(outdir: Path, settings: dict) -> dict:
    """Summary of the provenance recorded in every per-restart result under `outdir/runs`."""
    commits, packages, devices, statuses = Counter(), Counter(), Counter(), Counter()
    hashes = Counter()
    seeds = []
    for path in sorted((outdir / "runs").rglob("r*.json")):
        record = read_json(path, required=("provenance", "seed"))
        prov = record["provenance"]
        commits[prov["git_commit"] + (" (uncommitted changes)" if prov.get("git_dirty") else "")] += 1
        packages[json.dumps(prov["packages"], sort_keys=True)] += 1
        devices[prov["device"]] += 1
        hashes[prov["settings_hash"]] += 1
        statuses[record.get("status", "unknown")] += 1
        seeds.append(int(record["seed"]))
    return {
        "settings_hash": settings_hash(settings),
        "report_code_version": code_version(),
        "result_files": sum(statuses.values()),
        "result_status": dict(statuses),
        "result_settings_hashes": dict(hashes),
        "result_git_commits": dict(commits),
        "result_packages": [{"packages": json.loads(k), "results": v} for k, v in packages.items()],
        "result_devices": dict(devices),
        "seeds": {"distinct": len(set(seeds)), "min": min(seeds, default=None), "max": max(seeds, default=None)},
        "settings": settings,
    }


def write_run_record(settings: dict, outdir: str | Path, out_runtimes: str | Path,
                     out_provenance: str | Path) -> None:
    outdir = Path(outdir)
    write_bytes(out_runtimes, job_runtimes(outdir).to_csv(index=False, float_format="%.2f").encode())
    write_json(out_provenance, result_provenance(outdir, settings))
