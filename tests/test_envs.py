"""The conda environment (for --sdm conda) and the pip install name the same versions."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"unpinned requirement {line!r}: pin it with =="
            found[name.lower()] = version
    return found


def test_conda_environment_pins_what_pip_installs():
    pip = pins((ROOT / "envs" / "requirements.txt").read_text().splitlines())
    torch_spec = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-(torch==[^}]+)\}", (ROOT / "envs" / "install.sh").read_text())
    assert torch_spec, "envs/install.sh no longer sets a default TORCH_SPEC"
    pip.update(pins([torch_spec.group(1)]))

    env = yaml.safe_load((ROOT / "envs" / "vaefail.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda = pins(pip_section)
    assert conda == pip


def test_conda_environment_python_is_the_one_the_package_requires():
    env = yaml.safe_load((ROOT / "envs" / "vaefail.yaml").read_text())
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    requires = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert requires, "pyproject.toml should state requires-python"
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, requires.group(1).split(".")))
