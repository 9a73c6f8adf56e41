"""Reliability (issue 4): an interrupted run resumes without redoing finished jobs and
leaves nothing half-written; reruns give bit-identical results; a full disk, a diverging
member, corrupted data or a changed configuration end with a clear message and never cost
an earlier result."""
import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from vaefail import config, grid, jobs, selection, uci
from vaefail.config import ROOT
from vaefail.semisupervised import make_uci_splits, train_ss_job

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
HAVE_DEV_FULL = os.path.exists("/dev/full")

# Tiny settings for the job-level tests: 2 versions x 2 random restarts = 4 members a job.
TINY = {
    "scale": "smoke", "versions": 2, "restarts_random": 2, "restarts_gt": 0, "epochs": 2,
    "n_train": 200, "n_valid": 100, "n_test": 100, "hidden_layers": [16, 16],
    "surrogate_adam_steps": 50, "surrogate_lbfgs_iterations": 2, "surrogate_grid_points": 501,
    "eval_logpx_samples": 10, "uci_hidden_layers": [16, 16], "uci_epochs": 2,
}


@pytest.fixture(scope="module")
def raw():
    with open(ROOT / "config.yaml") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def tiny(raw, tmp_path_factory):
    """Settings, a surrogate and two data versions of Clusters, and UCI Titanic splits."""
    root = tmp_path_factory.mktemp("tiny")
    settings = config.resolve({**raw, **TINY})
    jobs.write_settings(settings, root / "settings.json", "smoke")
    surrogate = root / grid.surrogate_path("clusters")
    jobs.make_surrogate(settings, "clusters", str(surrogate))
    data = [str(root / grid.data_path("clusters", v)) for v in range(settings["versions"])]
    jobs.make_dataset(settings, "clusters", str(surrogate), data)
    uci_data = [str(root / grid.data_path("titanic", k)) for k in range(settings["uci_splits"])]
    make_uci_splits(settings, "titanic", uci_data)
    return {"root": root, "settings": settings, "surrogate": str(surrogate), "data": data, "uci_data": uci_data}


def _stems(tiny, folder, experiment="unsupervised", dataset="clusters", setting="vae"):
    return [str(tiny["root"] / folder / s) for s in grid.job_run_stems(tiny["settings"], experiment, dataset, setting)]


def _train(tiny, folder):
    stems = _stems(tiny, folder)
    jobs.train_job(tiny["settings"], "unsupervised", "clusters", "vae", tiny["surrogate"], tiny["data"], [], stems)
    return stems


def _without_wall_clock(record: dict) -> dict:
    record = json.loads(json.dumps(record))
    del record["train"]["ensemble_seconds"]
    return record


def _assert_identical_runs(stems_a, stems_b):
    for a, b in zip(stems_a, stems_b, strict=True):
        record_a = json.loads(Path(a + ".json").read_text())
        record_b = json.loads(Path(b + ".json").read_text())
        assert record_a["status"] == "ok"
        assert _without_wall_clock(record_a) == _without_wall_clock(record_b), a
        state_a = torch.load(a + ".pt", weights_only=True)
        state_b = torch.load(b + ".pt", weights_only=True)
        assert state_a.keys() == state_b.keys()
        for key, value in state_a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, state_b[key]), (a, key)
            else:
                assert value == state_b[key], (a, key)


# --- 2. the same config and seeds give bit-identical results --------------------------------
def test_a_rerun_of_a_training_job_is_bit_identical_in_process_and_from_the_cli(tiny, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the workflow's jobs run (--threads 1)
    try:
        first = _train(tiny, "first")
        second = _train(tiny, "second")   # same process: no dependence on global random state
    finally:
        torch.set_num_threads(threads)
    third = _stems(tiny, "third")         # a fresh process with another string-hash seed
    result = subprocess.run(
        [sys.executable, "-m", "vaefail", "train", "--settings", str(tiny["root"] / "settings.json"),
         "--experiment", "unsupervised", "--dataset", "clusters", "--setting", "vae",
         "--surrogate", tiny["surrogate"], "--data", *tiny["data"], "--gt-encoders",
         "--out-stems", *third, "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=300, env={**ENV, "PYTHONHASHSEED": "12345"})
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_identical_runs(first, second)
    _assert_identical_runs(first, third)


def test_a_rerun_of_a_semisupervised_job_is_bit_identical(tiny):
    def run(folder):
        stems = _stems(tiny, folder, "uci", "titanic", "vae-K1")
        train_ss_job(tiny["settings"], "uci", "titanic", "vae-K1", None, tiny["uci_data"], stems)
        return stems

    _assert_identical_runs(run("ss-first"), run("ss-second"))


# --- 4. a diverging member -----------------------------------------------------------------
def _poison(monkeypatch, members):
    """Build ensembles as usual, then put a NaN into these members' decoder weights."""
    build = jobs.build_ensemble

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        with torch.no_grad():
            for m in members:
                model.decoder.flat[m, 0] = float("nan")
        return model

    monkeypatch.setattr(jobs, "build_ensemble", poisoned)


def test_a_diverging_member_is_recorded_as_failed_and_left_out_of_selection(tiny, monkeypatch, caplog):
    _poison(monkeypatch, [1])   # member 1 = version 0, restart 1
    with caplog.at_level("WARNING", logger="vaefail"):
        stems = _train(tiny, "diverging")
    records = [json.loads(Path(s + ".json").read_text()) for s in stems]
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "ok"]
    failed = records[1]
    assert (failed["version"], failed["restart"]) == (0, 1)
    assert "non-finite training loss" in failed["reason"] and "epoch 1 of 2" in failed["reason"]
    assert failed["train"]["failed_epoch"] == 0
    assert "objective_valid" not in failed and "knn_test" not in failed
    torch.load(stems[1] + ".pt", weights_only=True)   # its weights file is complete too
    for record in records[:1] + records[2:]:
        assert all(math.isfinite(v) for v in [record["objective_valid"], record["knn_valid"], *record["sigma2"]])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(stems[1] in w and "non-finite training loss" in w for w in warnings), warnings
    assert any("1 of 4 members failed" in w for w in warnings), warnings

    # selection (as the select job runs it) never keeps the failed restart
    relative = [str(Path(s).relative_to(tiny["root"])) for s in stems]
    monkeypatch.setattr(grid, "experiment_run_stems", lambda settings, experiment: relative)
    out, out_all = tiny["root"] / "sel" / "selected.csv", tiny["root"] / "sel" / "all.csv"
    selection.select_experiment(tiny["settings"], "unsupervised", str(tiny["root"]), str(out), str(out_all))
    runs, selected = pd.read_csv(out_all), pd.read_csv(out)
    failed_row = runs[(runs["version"] == 0) & (runs["restart"] == 1)]
    assert failed_row["status"].item() == "failed" and not failed_row["kept_restart"].item()
    version1 = runs[runs["version"] == 1]
    best1 = version1.loc[version1["objective_valid"].idxmax(), "restart"]
    assert (selected["status"] == "ok").all()
    assert selected[["version", "restart"]].values.tolist() == [[0, 0], [1, best1]]


def test_a_job_whose_members_all_diverge_ends_with_a_clear_error_line(tiny, monkeypatch, caplog):
    _poison(monkeypatch, range(4))
    with caplog.at_level("WARNING", logger="vaefail"):
        stems = _train(tiny, "all-diverging")
    assert all(json.loads(Path(s + ".json").read_text())["status"] == "failed" for s in stems)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "unsupervised/clusters/vae: all 4 members failed" in errors[0] and "learning_rate" in errors[0]


# --- 3. a full disk ------------------------------------------------------------------------
WRITERS = {
    "json": (jobs.write_json, {"a": 1}, "r0.json"),
    "torch": (jobs.save_torch, {"w": torch.ones(3)}, "r0.pt"),
    "npz": (jobs.save_npz, {"x": torch.ones(3).numpy()}, "v0.npz"),
}


def _fill_disk(monkeypatch, path: Path, how: str) -> None:
    """Make the next write to `path` fail with ENOSPC: the write itself (the temporary file
    is /dev/full) or the sync to disk (as delayed allocation reports it)."""
    if how == "write":
        if not HAVE_DEV_FULL:
            pytest.skip("no /dev/full here")
        os.symlink("/dev/full", jobs.temporary_path(path))
    else:
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(jobs.os, "fsync", fsync)


@pytest.mark.parametrize("how", ["write", "fsync"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_full_disk_names_the_file_and_keeps_the_earlier_result(kind, how, tmp_path, monkeypatch):
    write, obj, name = WRITERS[kind]
    path = tmp_path / "runs" / name
    write(path, obj)                                   # an earlier result
    before, stat = path.read_bytes(), path.stat()
    _fill_disk(monkeypatch, path, how)
    with pytest.raises(jobs.ResultWriteError) as info:
        write(path, {"b": 2} if kind == "json" else obj)
    message = str(info.value)
    assert message.startswith(f"no space left on device while writing {path};")
    assert "earlier results are untouched" in message and "free space and rerun" in message
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in path.parent.iterdir()) == [name]      # no temporary file left
    fresh = tmp_path / "runs" / f"new-{name}"                             # nothing earlier: nothing left
    _fill_disk(monkeypatch, fresh, how)
    with pytest.raises(jobs.ResultWriteError):
        write(fresh, obj)
    assert sorted(p.name for p in path.parent.iterdir()) == [name]


def test_other_write_errors_name_the_file_and_cause(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(jobs.os, "fsync", fsync)
    path = tmp_path / "r0.json"
    with pytest.raises(jobs.ResultWriteError) as info:
        jobs.write_json(path, {})
    assert str(info.value) == (f"could not write {path}: {os.strerror(errno.EIO)}; nothing was written there "
                               "and earlier results are untouched")
    assert info.value.errno == errno.EIO and not list(tmp_path.iterdir())


@pytest.mark.skipif(not HAVE_DEV_FULL, reason="no /dev/full here")
def test_the_cli_reports_a_full_disk_in_one_line_and_exits_non_zero(tmp_path):
    out = tmp_path / "settings.json"
    jobs.write_settings({"seed": 1}, out, "smoke")
    before = out.read_bytes()
    os.symlink("/dev/full", jobs.temporary_path(out))
    result = subprocess.run(
        [sys.executable, "-m", "vaefail", "settings", "--settings-json", '{"seed": 2}', "--scale", "smoke",
         "--out", str(out)], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"python -m vaefail settings: error: no space left on device while writing "
                                     f"{out}; nothing was written there and earlier results are untouched: "
                                     "free space and rerun")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


# --- 5. corrupted data, a changed configuration ------------------------------------------------
def test_corrupted_uci_data_is_refused_before_any_split_is_replaced(tiny, tmp_path, monkeypatch):
    spec = uci.uci_spec("titanic")
    copy = tmp_path / "uci" / spec.path
    copy.parent.mkdir(parents=True)
    data = bytearray((uci.DEFAULT_DATA_DIR / spec.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(uci, "DEFAULT_DATA_DIR", tmp_path / "uci")
    earlier = {p: Path(p).read_bytes() for p in tiny["uci_data"]}
    with pytest.raises(uci.DataIntegrityError, match="sha256") as info:
        make_uci_splits(tiny["settings"], "titanic", tiny["uci_data"])
    assert str(copy) in str(info.value)
    assert {p: Path(p).read_bytes() for p in tiny["uci_data"]} == earlier


def test_a_run_with_other_settings_is_refused_and_leaves_the_folder_as_it_was(raw, tmp_path):
    settings = config.resolve({**raw, "scale": "smoke"})
    jobs.write_settings(settings, tmp_path / "settings.json", "smoke")
    result_file = tmp_path / "runs" / "unsupervised" / "clusters" / "vae" / "v0" / "r0.json"
    jobs.write_json(result_file, {"status": "ok"})
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    result = subprocess.run([*SNAKEMAKE, "-n", "--config", "scale=smoke", f"outdir={tmp_path}", "epochs=3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert f"{tmp_path} holds results of different settings (epochs: 2 -> 3)" in text
    assert "outdir=<new folder>" in text
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


# --- 1. a run killed mid-way resumes -------------------------------------------------------
KILL_DATASETS = ("titanic", "contraceptive")   # 6 training jobs; UCI needs no surrogate


def _snakemake_jobs(text: str) -> tuple[dict, set]:
    """From Snakemake's output: {jobid: (rule, wildcards)} of started jobs, and finished jobids."""
    started, rule, jobid = {}, None, None
    for line in text.splitlines():
        if m := re.fullmatch(r"(?:local)?rule (\w+):", line):      # a job's block starts
            rule, jobid = m.group(1), None
        elif not line.startswith(" "):                               # ... and ends
            rule = None
        elif rule and (m := re.fullmatch(r"jobid: (\d+)", line.strip())):
            jobid = int(m.group(1))
            started.setdefault(jobid, (rule, ""))
        elif rule and jobid is not None and (m := re.fullmatch(r"wildcards: (.*)", line.strip())):
            started[jobid] = (rule, m.group(1))
    finished = {int(j) for j in re.findall(r"Finished jobid: (\d+)", text)}
    return started, finished


def _training(text: str) -> tuple[set, set]:
    """(started, finished) training jobs as their wildcards, e.g. 'dataset=titanic, setting=vae-K1'."""
    started, finished = _snakemake_jobs(text)
    train = {j: w for j, (rule, w) in started.items() if rule == "train_uci" and w}
    return set(train.values()), {w for j, w in train.items() if j in finished}


def _job_files(outdir, settings, wildcards: str) -> list[Path]:
    values = dict(item.split("=") for item in wildcards.split(", "))
    stems = grid.job_run_stems(settings, "uci", values["dataset"], values["setting"])
    return [outdir / f"{stem}{suffix}" for stem in stems for suffix in (".json", ".pt")]


def test_a_run_killed_during_training_resumes_without_redoing_finished_jobs(raw, tmp_path):
    overrides = ["scale=smoke", f"outdir={tmp_path}", "uci_epochs=40"]   # training ~1-2 s a job
    settings = config.resolve({**raw, "scale": "smoke", "uci_epochs": 40})
    jobs_all = {f"dataset={d}, setting={s.id}" for d in KILL_DATASETS for s in grid.experiment_settings(settings, "uci", d)}
    targets = [str(_job_files(tmp_path, settings, w)[0]) for w in sorted(jobs_all)]
    command = [*SNAKEMAKE, *targets, "--cores", "2", "--config", *overrides]
    log = tmp_path / "first-run.log"
    with open(log, "w") as fh:
        first = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        # kill (as a scheduler or Ctrl-C does: every process of the group) once a training
        # job has finished and another is inside its training loop
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            started, finished = _training(log.read_text())
            training = [w for w in started - finished if "training members" in (text := _job_log(tmp_path, w))
                        and "epoch 40/40" not in text]
            if finished and training:
                os.killpg(first.pid, signal.SIGTERM)
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"no moment with a finished and a running training job:\n{log.read_text()[-3000:]}")
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    started, finished = _training(log.read_text())
    assert finished and started - finished, log.read_text()[-3000:]
    for w in set(training) - finished:   # killed inside training: stopped at once (vaefail.__main__)
        assert "terminated by signal 15" in _job_log(tmp_path, w), w

    # nothing half-written: no temporary file, every result present is complete
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    for result in (tmp_path / "runs").rglob("*.json"):
        assert "status" in json.loads(result.read_text())
        assert isinstance(torch.load(result.with_suffix(".pt"), weights_only=True), dict)
    done = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for w in finished for p in _job_files(tmp_path, settings, w)}

    second = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    text = second.stdout + second.stderr
    assert second.returncode == 0, text[-3000:]
    rerun, rerun_finished = _training(text)
    assert rerun == rerun_finished == jobs_all - finished      # only the jobs that had not finished
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in done} == done   # untouched
    for w in jobs_all:
        for path in _job_files(tmp_path, settings, w):
            assert path.exists(), path
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def _job_log(outdir: Path, wildcards: str) -> str:
    values = dict(item.split("=") for item in wildcards.split(", "))
    path = outdir / "logs" / "train" / "uci" / values["dataset"] / f"{values['setting']}.log"
    return path.read_text() if path.exists() else ""


def test_selection_stops_with_a_message_when_every_restart_failed():
    runs = pd.DataFrame({"status": ["failed", "failed"], "dataset": ["clusters"] * 2, "hyper": ["vae"] * 2,
                         "version": [0, 1]})
    with pytest.raises(ValueError, match="all 2 restarts of this experiment failed"):
        selection.best_restarts(runs)
