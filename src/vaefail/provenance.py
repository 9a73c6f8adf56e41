"""What produced a result: settings hash, code version, packages, device."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys

from .config import ROOT, settings_hash


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """Git commit of the project and whether the working tree had uncommitted changes.

    VAEFAIL_GIT_COMMIT overrides the lookup (e.g. for an installed copy without .git).
    """
    if os.environ.get("VAEFAIL_GIT_COMMIT"):
        return {"git_commit": os.environ["VAEFAIL_GIT_COMMIT"], "git_dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": None}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    import numpy
    import scipy
    import torch
    return {"python": sys.version.split()[0], "torch": str(torch.__version__), "numpy": numpy.__version__,
            "scipy": scipy.__version__}


def device_description(device: str) -> str:
    if device == "cuda":
        import torch
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.machine()}, {os.cpu_count()} cores"


def provenance(settings: dict, device: str) -> dict:
    return {"settings_hash": settings_hash(settings), **code_version(),
            "packages": package_versions(), "device": device_description(device)}
