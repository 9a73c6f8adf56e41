"""Saved results: how every result file is written and read.

Writers put a result in a temporary file in the same folder, sync it and rename it into
place, so an interrupted job never leaves a half-written result that looks complete, and
a write that fails (a full disk) leaves whatever was at the path before as it was and
raises ResultWriteError, whose message names the file and the cause.

Readers are the one way a saved result (JSON, weights .pt, data .npz, CSV) is read back.
A file that is missing, truncated or not what it should be raises ResultReadError, whose
one-line message names the file, the cause and the workflow rule that makes it, and says
how to remake it.  Weights are only ever unpickled with torch's weights_only=True: a
results folder may come from someone else.

torch is imported only where weights are saved or loaded, so selection, tables and the
run record do without it.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .catalogue import TRAINING_RULES
from .config import ConfigError, settings_hash
from .grid import UCI_DATASETS


# --- writing ------------------------------------------------------------------------------
class ResultWriteError(OSError):
    """A result file could not be written (disk full, quota, permissions...).

    The file at `path` is as it was before the attempt (absent, or its previous
    version) and no temporary file is left behind.  The message names the file and the
    cause; the original OSError is chained as __cause__ and its errno is kept."""

    REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}

    def __init__(self, path: str | Path, cause: OSError):
        reason = self.REASONS.get(cause.errno)
        if reason:
            message = (f"{reason} while writing {path}; nothing was written there and earlier "
                       "results are untouched: free space and rerun")
        else:
            message = (f"could not write {path}: {cause.strerror or cause}; nothing was written "
                       "there and earlier results are untouched")
        super().__init__(cause.errno, message, str(path))
        self.message = message

    def __str__(self) -> str:
        return self.message


def temporary_path(path: str | Path) -> Path:
    """Where a result is written before it is renamed to `path` (the same folder, so that
    the rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically: to a temporary file, synced to disk (a full disk
    shows here at the latest), then renamed over `path`.  On any error or interrupt the
    temporary file is removed and `path` keeps its previous content; OSErrors are raised
    as ResultWriteError."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as error:   # also KeyboardInterrupt and SystemExit (SIGTERM, see __main__)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ResultWriteError(path, error) from error
        raise


def write_json(path: str | Path, obj) -> None:
    write_bytes(path, json.dumps(obj, indent=1).encode())


def save_torch(path: str | Path, obj) -> None:
    import torch

    # serialised in memory first: torch.save into a file turns a failed write into an
    # opaque RuntimeError ("unexpected pos ..."), so the bytes are written by write_bytes
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def save_npz(path: str | Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def load_settings(path: str | Path) -> dict:
    return read_json(path, required=("settings",))["settings"]


def write_settings(settings: dict, path: str | Path, scale: str) -> None:
    write_json(path, {"settings": settings, "settings_hash": settings_hash(settings), "scale": scale})


def check_output_dir(settings: dict, outdir: str | Path) -> None:
    """Refuse to mix results of different settings in one folder.

    The first run records its settings in <outdir>/settings.json; a later run whose
    settings differ would overwrite those results, so it stops and names what changed.
    """
    record = Path(outdir) / "settings.json"
    if not record.exists():
        return
    previous = load_settings(record)
    if previous == settings:
        return
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    details = "; ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
    raise ConfigError(f"{outdir} holds results of different settings ({details}). To keep them, "
                      f"send this run elsewhere with --config outdir=<new folder>; to replace them, "
                      f"delete {outdir} first.")


# --- reading ------------------------------------------------------------------------------
class ResultReadError(ValueError):
    """A saved result is missing or cannot be read; the message names the file, the cause,
    the rule that makes it and how to remake it, in one line."""

    def __init__(self, path: str | Path, cause: str):
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}; {remedy(path)}")


# The folder under an output folder that holds a file -> the workflow rule that writes it.
_RULE_OF_FOLDER = {"surrogates": "surrogate", "gt_encoders": "gt_encoders", "selected": "select",
                   "tables": "table", "record": "run_record"}


def rule_of(path: str | Path) -> str | None:
    """The workflow rule that writes `path` (a file under an output folder), or None."""
    parts = Path(path).parts
    if parts and parts[-1] == "settings.json":
        return "settings"
    for i in range(len(parts) - 2, -1, -1):      # the folder nearest the file decides
        folder = parts[i]
        if folder == "runs" and i + 1 < len(parts) - 1:
            return TRAINING_RULES.get(parts[i + 1])
        if folder == "data" and i + 1 < len(parts) - 1:
            return "uci_splits" if parts[i + 1] in UCI_DATASETS else "dataset"
        if folder in _RULE_OF_FOLDER:
            return _RULE_OF_FOLDER[folder]
    return None


def remedy(path: str | Path) -> str:
    """How to remake a bad result file, naming the rule that writes it."""
    rule = rule_of(path)
    job = f"the job of rule '{rule}' that writes it" if rule else "the job that writes it"
    return f"delete it and run the same snakemake command again to rerun {job}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ResultReadError(path, "missing")
    if path.stat().st_size == 0:
        raise ResultReadError(path, "empty (0 bytes)")


def read_json(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """A saved JSON object; `required`: keys it must have."""
    path = Path(path)
    _check_exists(path)
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, OSError) as error:      # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise ResultReadError(path, f"not valid JSON (truncated or corrupted: {_first_line(error)})") from error
    if not isinstance(obj, dict):
        raise ResultReadError(path, f"holds a JSON {type(obj).__name__}, not an object")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ResultReadError(path, f"lacks the key(s) {', '.join(map(repr, missing))}")
    return obj


def load_weights(path: str | Path, map_location="cpu"):
    """A saved weights file (torch.save of tensors and plain values), unpickled safely."""
    import torch

    path = Path(path)
    _check_exists(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:     # noqa: BLE001 (torch raises many kinds for a bad file)
        # torch's own message for a refused pickle recommends weights_only=False, which is
        # unsafe for files from elsewhere: it is not passed on
        cause = ("not a weights file (torch refused to unpickle it with weights_only=True)"
                 if "weights_only" in str(error) else f"not a readable weights file ({_first_line(error)})")
        raise ResultReadError(path, cause) from error


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a saved .npz data file, read now (a damaged member shows here)."""
    path = Path(path)
    _check_exists(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except Exception as error:     # noqa: BLE001 (zipfile, zlib and numpy raise many kinds)
        raise ResultReadError(path, f"not a readable .npz data file ({_first_line(error)})") from error


def read_csv(path: str | Path, required: tuple[str, ...] = ()):
    """A saved CSV table; `required`: columns it must have."""
    import pandas as pd

    path = Path(path)
    _check_exists(path)
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise ResultReadError(path, f"not a readable CSV table ({_first_line(error)})") from error
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ResultReadError(path, f"lacks the column(s) {', '.join(map(repr, missing))}")
    return table


def check_readable(path: str | Path) -> None:
    """Raise ResultReadError unless `path` looks whole: JSON parses; a .pt or .npz is a zip
    archive whose every member matches its checksum.  Cheap enough for tens of thousands
    of files, and needs no torch."""
    path = Path(path)
    if path.suffix == ".json":
        read_json(path)
        return
    _check_exists(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ResultReadError(path, f"not a whole {path.suffix} file ({_first_line(error)})") from error
    if damaged is not None:
        raise ResultReadError(path, f"damaged: its member {damaged!r} fails its checksum")


def unreadable(paths) -> list[ResultReadError]:
    """The errors of every file of `paths` that check_readable refuses."""
    errors = []
    for path in paths:
        try:
            check_readable(path)
        except ResultReadError as error:
            errors.append(error)
    return errors
