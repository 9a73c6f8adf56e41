"""Reliability (issue 4): an interrupted run resumes without redoing finished jobs and
leaves nothing half-written; reruns give bit-identical results; a full disk, a diverging
member, corrupted data or a changed configuration end with a clear message and never cost
an earlier result.  Issue 10: a failed job's cause is on the screen, a damaged result is
named with the rule that remakes it, the same command resumes after a kill, values on shell
lines are quoted, and jobs run this checkout's code."""
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

from vaefail import config, files, grid
from vaefail.config import ROOT
from vaefail.data import uci
from vaefail.data.dataset_files import make_dataset, make_uci_splits
from vaefail.data.surrogate import make_surrogate
from vaefail.jobs import training_job
from vaefail.jobs.semisupervised import train_ss_job
from vaefail.report import selection

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
    files.write_settings(settings, root / "settings.json", "smoke")
    surrogate = root / grid.surrogate_path("clusters")
    make_surrogate(settings, "clusters", str(surrogate))
    data = [str(root / grid.data_path("clusters", v)) for v in range(settings["versions"])]
    make_dataset(settings, "clusters", str(surrogate), data)
    uci_data = [str(root / grid.data_path("titanic", k)) for k in range(settings["uci_splits"])]
    make_uci_splits(settings, "titanic", uci_data)
    return {"root": root, "settings": settings, "surrogate": str(surrogate), "data": data, "uci_data": uci_data}


def _stems(tiny, folder, experiment="unsupervised", dataset="clusters", setting="vae"):
    return [str(tiny["root"] / folder / s) for s in grid.job_run_stems(tiny["settings"], experiment, dataset, setting)]


def _train(tiny, folder):
    stems = _stems(tiny, folder)
    training_job.train_job(tiny["settings"], "unsupervised", "clusters", "vae", tiny["surrogate"], tiny["data"], [], stems)
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
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "12345"})
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
    build = training_job.build_ensemble

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        with torch.no_grad():
            for m in members:
                model.decoder.flat[m, 0] = float("nan")
        return model

    monkeypatch.setattr(training_job, "build_ensemble", poisoned)


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
    "json": (files.write_json, {"a": 1}, "r0.json"),
    "torch": (files.save_torch, {"w": torch.ones(3)}, "r0.pt"),
    "npz": (files.save_npz, {"x": torch.ones(3).numpy()}, "v0.npz"),
}


def _fill_disk(monkeypatch, path: Path, how: str) -> None:
    """Make the next write to `path` fail with ENOSPC: the write itself (the temporary file
    is /dev/full) or the sync to disk (as delayed allocation reports it)."""
    if how == "write":
        if not HAVE_DEV_FULL:
            pytest.skip("no /dev/full here")
        os.symlink("/dev/full", files.temporary_path(path))
    else:
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(files.os, "fsync", fsync)


@pytest.mark.parametrize("how", ["write", "fsync"])
@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_full_disk_names_the_file_and_keeps_the_earlier_result(kind, how, tmp_path, monkeypatch):
    write, obj, name = WRITERS[kind]
    path = tmp_path / "runs" / name
    write(path, obj)                                   # an earlier result
    before, stat = path.read_bytes(), path.stat()
    _fill_disk(monkeypatch, path, how)
    with pytest.raises(files.ResultWriteError) as info:
        write(path, {"b": 2} if kind == "json" else obj)
    message = str(info.value)
    assert message.startswith(f"no space left on device while writing {path};")
    assert "earlier results are untouched" in message and "free space and rerun" in message
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in path.parent.iterdir()) == [name]      # no temporary file left
    fresh = tmp_path / "runs" / f"new-{name}"                             # nothing earlier: nothing left
    _fill_disk(monkeypatch, fresh, how)
    with pytest.raises(files.ResultWriteError):
        write(fresh, obj)
    assert sorted(p.name for p in path.parent.iterdir()) == [name]


def test_other_write_errors_name_the_file_and_cause(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(files.os, "fsync", fsync)
    path = tmp_path / "r0.json"
    with pytest.raises(files.ResultWriteError) as info:
        files.write_json(path, {})
    assert str(info.value) == (f"could not write {path}: {os.strerror(errno.EIO)}; nothing was written there "
                               "and earlier results are untouched")
    assert info.value.errno == errno.EIO and not list(tmp_path.iterdir())


@pytest.mark.skipif(not HAVE_DEV_FULL, reason="no /dev/full here")
def test_the_cli_reports_a_full_disk_in_one_line_and_exits_non_zero(tmp_path):
    out = tmp_path / "settings.json"
    files.write_settings({"seed": 1}, out, "smoke")
    before = out.read_bytes()
    os.symlink("/dev/full", files.temporary_path(out))
    result = subprocess.run(
        [sys.executable, "-m", "vaefail", "settings", "--settings-json", '{"seed": 2}', "--scale", "smoke",
         "--out", str(out)], capture_output=True, text=True, timeout=120)
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
    files.write_settings(settings, tmp_path / "settings.json", "smoke")
    result_file = tmp_path / "runs" / "unsupervised" / "clusters" / "vae" / "v0" / "r0.json"
    files.write_json(result_file, {"status": "ok"})
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    result = subprocess.run([*SNAKEMAKE, "-n", "--config", "scale=smoke", f"outdir={tmp_path}", "epochs=3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
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
        first = subprocess.Popen(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
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
    for result in (tmp_path / "runs").rglob("r*.json"):
        assert "status" in json.loads(result.read_text())
        assert isinstance(torch.load(result.with_suffix(".pt"), weights_only=True), dict)
    for manifest in (tmp_path / "runs").rglob("job.json"):     # written last: its job finished
        assert json.loads(manifest.read_text())["members"] == len(list(manifest.parent.rglob("r*.json")))
    done = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for w in finished for p in _job_files(tmp_path, settings, w)}

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
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


# --- 6. failures that explain themselves (issue 10) ---------------------------------------------
def _valid(path: Path) -> None:
    """Write a valid result of `path`'s kind."""
    if path.suffix == ".json":
        files.write_json(path, {"status": "ok", "provenance": {}})
    elif path.suffix == ".pt":
        files.save_torch(path, {"encoder": torch.ones(3)})
    elif path.suffix == ".npz":
        files.save_npz(path, {"x_train": torch.ones(3).numpy()})
    else:
        files.write_bytes(path, b"dataset,method\nclusters,vae\n")


DAMAGES = {
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
    "random bytes": lambda p: p.write_bytes(os.urandom(3000)),
    "empty": lambda p: p.write_bytes(b""),
    "deleted": lambda p: p.unlink(),
}
READERS = {".json": files.read_json, ".pt": files.load_weights, ".npz": files.load_npz, ".csv": files.read_csv}


@pytest.mark.parametrize("relative, rule, damage", [
    ("runs/unsupervised/figure-8/vae/v0/r0.json", "train", "truncated"),
    ("runs/unsupervised/figure-8/vae/v0/r0.pt", "train", "random bytes"),
    ("runs/semisupervised/discrete-semicircle/vae/a0-g1/v1/r0.pt", "train_semisupervised", "truncated"),
    ("runs/uci/titanic/vae-K1/a0-g1-s0.5/v0/r0.json", "train_uci", "deleted"),
    ("data/titanic/v0.npz", "uci_splits", "truncated"),
    ("data/clusters/v1.npz", "dataset", "random bytes"),
    ("surrogates/clusters.pt", "surrogate", "empty"),
    ("gt_encoders/clusters/v0.pt", "gt_encoders", "truncated"),
    ("selected/unsupervised.csv", "select", "empty"),
    ("settings.json", "settings", "random bytes"),
])
def test_a_damaged_result_is_named_with_the_rule_that_remakes_it(tmp_path, relative, rule, damage):
    path = tmp_path / "results dir" / relative
    _valid(path)
    DAMAGES[damage](path)
    with pytest.raises(files.ResultReadError) as info:
        READERS[path.suffix](path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert message.endswith(f"delete it and run the same snakemake command again to rerun the job of rule "
                            f"'{rule}' that writes it")
    assert "weights_only=False" not in message and "False" not in message   # never the unsafe advice
    if path.suffix != ".csv":            # the cheap check (redraw, selection) refuses it too
        with pytest.raises(files.ResultReadError, match=re.escape(str(path))):
            files.check_readable(path)


def test_the_readers_read_whole_results_back(tmp_path):
    for name in ("r0.json", "r0.pt", "v0.npz", "selected.csv"):
        _valid(tmp_path / name)
    for name in ("r0.json", "r0.pt", "v0.npz"):
        files.check_readable(tmp_path / name)
    assert files.read_json(tmp_path / "r0.json")["status"] == "ok"
    assert torch.equal(files.load_weights(tmp_path / "r0.pt")["encoder"], torch.ones(3))
    assert files.load_npz(tmp_path / "v0.npz")["x_train"].tolist() == [1.0, 1.0, 1.0]
    assert files.read_csv(tmp_path / "selected.csv", required=("method",))["method"].item() == "vae"
    with pytest.raises(files.ResultReadError, match="lacks the column"):
        files.read_csv(tmp_path / "selected.csv", required=("restart",))


def _select(tiny, stems, monkeypatch):
    relative = [str(Path(s).relative_to(tiny["root"])) for s in stems]
    monkeypatch.setattr(grid, "experiment_run_stems", lambda settings, experiment: relative)
    out, out_all = tiny["root"] / "sel" / "selected.csv", tiny["root"] / "sel" / "all.csv"
    selection.select_experiment(tiny["settings"], "unsupervised", str(tiny["root"]), str(out), str(out_all))


def test_selection_refuses_a_result_of_other_settings_or_with_damaged_weights(tiny, monkeypatch):
    stems = _train(tiny, "checked")
    _select(tiny, stems, monkeypatch)                      # all whole and of these settings: fine
    result = Path(stems[2] + ".json")
    record = json.loads(result.read_text())
    record["provenance"]["settings_hash"] = "0123456789ab"
    result.write_text(json.dumps(record))
    with pytest.raises(files.ResultReadError) as info:
        _select(tiny, stems, monkeypatch)
    assert str(info.value).startswith(f"{result}: made with other settings (settings_hash 0123456789ab, "
                                      f"this run's is {config.settings_hash(tiny['settings'])})")
    _train(tiny, "checked")
    weights = Path(stems[1] + ".pt")
    os.truncate(weights, weights.stat().st_size - 100)
    with pytest.raises(files.ResultReadError, match=re.escape(f"{weights}: not a whole .pt file")):
        _select(tiny, stems, monkeypatch)


def _settings_file(tmp_path) -> Path:
    path = tmp_path / "settings.json"
    files.write_settings(smoke_settings(), path, "smoke")
    return path


def test_a_failing_job_shows_its_cause_on_stderr_and_reads_its_declared_data_file(tmp_path):
    """The uci-splits job reads the file the rule names (here a damaged copy elsewhere) and,
    failing, prints the cause and its log's name on stderr, the screen of a workflow run."""
    spec = uci.uci_spec("titanic")
    copy = tmp_path / "other checkout" / "data" / "uci" / spec.path
    copy.parent.mkdir(parents=True)
    data = bytearray((uci.DEFAULT_DATA_DIR / spec.path).read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    log = tmp_path / "logs" / "titanic.log"
    result = subprocess.run(
        [sys.executable, "-m", "vaefail", "uci-splits", "--settings", str(_settings_file(tmp_path)),
         "--dataset", "titanic", "--uci-file", str(copy), "--out", str(tmp_path / "v0.npz"), str(tmp_path / "v1.npz"),
         "--log", str(log)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"python -m vaefail uci-splits: error: Titanic data file {copy} has sha256 ")
    assert "restore it byte for byte" in lines[0] and lines[1:] == [f"  (log: {log})"]
    assert lines[0] in log.read_text()
    assert not (tmp_path / "v0.npz").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_an_unexpected_error_shows_its_type_and_message_and_logs_the_traceback(tiny, tmp_path):
    log = tmp_path / "train.log"
    result = subprocess.run(
        [sys.executable, "-m", "vaefail", "train", "--settings", str(tiny["root"] / "settings.json"),
         "--experiment", "unsupervised", "--dataset", "clusters", "--setting", "vae",
         "--surrogate", tiny["surrogate"], "--data", *tiny["data"], "--out-stems", *_stems(tiny, "cuda"),
         "--device", "cuda", "--log", str(log)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("python -m vaefail train: error: RuntimeError: device 'cuda' was requested but torch "
                            "sees no GPU") and first.endswith("run with --config device=cpu")
    assert "Traceback" not in result.stderr and "Traceback" in log.read_text()


@pytest.mark.skipif(not HAVE_DEV_FULL, reason="no /dev/full here")
def test_a_job_whose_log_cannot_be_written_still_shows_its_error(tmp_path):
    out = tmp_path / "settings.json"
    os.symlink("/dev/full", files.temporary_path(out))
    result = subprocess.run(
        [sys.executable, "-m", "vaefail", "settings", "--settings-json", '{"seed": 2}', "--scale", "smoke",
         "--out", str(out), "--log", "/dev/full"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"python -m vaefail settings: error: no space left on device while writing "
                                          f"{out}; nothing was written there and earlier results are untouched: "
                                          "free space and rerun", "  (log: /dev/full)"]


# The workflow: values on shell lines, this checkout's code, resuming, the GPU check.
# An output folder whose name would run commands if a shell line left it unquoted.
HOSTILE_NAME = "out dir;touch INJECTED-1;$(touch INJECTED-2)`touch INJECTED-3`"
UCI_JOB = {"dataset": "titanic", "setting": "vae-K1"}


def _decoy_vaefail(folder: Path) -> Path:
    """A `vaefail` package that, imported instead of this checkout's, leaves a mark."""
    package = folder / "vaefail"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(folder / 'DECOY-IMPORTED')!r}, 'w').close()\n")
    (package / "__main__.py").write_text("raise SystemExit(3)\n")
    return folder


def _uci_job_targets(outdir: Path) -> list[str]:
    settings = smoke_settings()
    stems = grid.job_run_stems(settings, "uci", UCI_JOB["dataset"], UCI_JOB["setting"])
    return [str(outdir / "settings.json"), *(str(outdir / f"{s}{x}") for s in stems for x in (".json", ".pt"))]


def smoke_settings() -> dict:
    with open(ROOT / "config.yaml") as fh:
        return config.resolve({**yaml.safe_load(fh), "scale": "smoke"})


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """One UCI training job and what it needs, into a hostile output folder, from a shell
    whose Python path holds another `vaefail` first (as a second checkout's would be)."""
    root = tmp_path_factory.mktemp("hostile")
    outdir = root / HOSTILE_NAME
    decoy = _decoy_vaefail(root / "decoy")
    env = {**os.environ, "PYTHONPATH": str(decoy)}
    command = [*SNAKEMAKE, "--cores", "2", "--config", "scale=smoke", f"outdir={outdir}", "--", *_uci_job_targets(outdir)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return {"root": root, "outdir": outdir, "decoy": decoy, "result": result}


def test_values_on_shell_lines_are_quoted(hostile_run):
    result, outdir = hostile_run["result"], hostile_run["outdir"]
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert not [p for p in hostile_run["root"].rglob("INJECTED-*")] + [p for p in ROOT.glob("INJECTED-*")]
    for target in _uci_job_targets(outdir):
        assert Path(target).is_file(), target
    assert (outdir / "logs" / "train" / "uci" / "titanic" / "vae-K1.log").read_text()


def test_jobs_run_this_checkouts_code(hostile_run):
    assert hostile_run["result"].returncode == 0
    assert not (hostile_run["decoy"] / "DECOY-IMPORTED").exists()


def test_the_same_command_resumes_after_snakemake_is_killed(tmp_path):
    """kill -9 of Snakemake while a job runs: the job goes on and writes its outputs, which
    Snakemake still holds as incomplete, and the lock stays.  As the README says: --unlock,
    then the same command, which (profiles/default: rerun-incomplete) redoes the job."""
    settings = smoke_settings()
    stems = grid.job_run_stems(settings, "uci", UCI_JOB["dataset"], UCI_JOB["setting"])
    outputs = [tmp_path / f"{s}{x}" for s in stems for x in (".json", ".pt")]
    command = [*SNAKEMAKE, "--cores", "2", "--config", "scale=smoke", f"outdir={tmp_path}", "uci_epochs=40",
               "--", *map(str, outputs)]
    first_log = tmp_path / "first-run.log"
    with open(first_log, "w") as fh:
        first = subprocess.Popen(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        job_log = tmp_path / "logs" / "train" / "uci" / UCI_JOB["dataset"] / f"{UCI_JOB['setting']}.log"
        deadline = time.monotonic() + 240
        while "training members" not in (job_log.read_text() if job_log.exists() else "") and first.poll() is None:
            assert time.monotonic() < deadline, first_log.read_text()[-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)               # Snakemake only: its job goes on
        first.wait(timeout=60)
        while not all(p.exists() for p in outputs):     # the orphaned job finishes
            assert time.monotonic() < deadline, "the training job did not finish"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    locked = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    unlock = subprocess.run([*command[:command.index("--")], "--unlock"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    before = outputs[0].stat().st_mtime_ns
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text[-3000:]
    assert "rule train_uci:" in text and "IncompleteFilesException" not in text
    assert outputs[0].stat().st_mtime_ns > before


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_a_local_run_on_a_gpu_torch_cannot_see_stops_before_any_job(tmp_path):
    result = subprocess.run([*SNAKEMAKE, "--cores", "2", "--config", "scale=smoke", f"outdir={tmp_path}",
                             "device=cuda", "--", *_uci_job_targets(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert ("device=cuda was asked for, but torch sees no GPU on this machine" in text
            and "or run with --config device=cpu" in text)
    assert not list(tmp_path.iterdir())          # no job ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
def test_a_cluster_run_with_device_cuda_is_submitted_from_a_login_node_without_gpu(tmp_path):
    """No GPU check where Snakemake only submits: here the submission itself fails (a fake
    sbatch), after the local settings job ran."""
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for command in ("sbatch", "sacct", "squeue", "sinfo", "scontrol", "scancel"):
        (fake / command).write_text("#!/bin/sh\necho 'fake SLURM: not here' >&2\nexit 1\n")
        (fake / command).chmod(0o755)
    outdir = tmp_path / "out"
    result = subprocess.run([*SNAKEMAKE, "--executor", "slurm", "--jobs", "1", "--slurm-init-seconds-before-status-checks",
                             "1", "--config", "scale=smoke", f"outdir={outdir}", "device=cuda", "--",
                             *_uci_job_targets(outdir)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})
    text = result.stdout + result.stderr
    assert "torch sees no GPU" not in text
    assert (outdir / "settings.json").is_file() and "Error in rule uci_splits" in text, text[-3000:]
