"""The README says what the code holds: its parameter table what config.yaml and the schema say,
its "What is where" the package's tree."""
import re
from pathlib import Path

import yaml
from test_layers import LAYERS

ROOT = Path(__file__).resolve().parents[1]


PRESET_COLUMNS = ("paper", "default", "decisive")


def parameter_table() -> dict[str, tuple[str, ...]]:
    """setting -> (description, paper cell, default cell, decisive cell) from the README's table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 2 + len(PRESET_COLUMNS) and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = tuple(cells[1:])
    return rows


def test_every_setting_is_in_the_readme_table_with_the_presets_values():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    presets = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]
    rows = parameter_table()
    assert list(rows) == list(schema["definitions"]["settings"]["properties"])
    for key, (description, paper, *others) in rows.items():
        assert description, key
        assert yaml.safe_load(paper.strip("`")) == presets["paper"][key], key
        for preset, text in zip(PRESET_COLUMNS[1:], others):
            expected = presets["paper"][key] if text == "=" else yaml.safe_load(text.strip("`").replace("\\|", "|"))
            assert presets[preset][key] == expected, (preset, key)


def what_is_where_folders() -> dict[str, str]:
    """The text of each sub-item of 'What is where' under `src/vaefail/`, by the folder it is
    about: "" for the top level, "models" for the item that starts with `models/`, ..."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## What is where", 1)[1].split("\n## ", 1)[0]
    package = section.split("- `src/vaefail/`", 1)[1].split("\n- ", 1)[0]
    items = re.split(r"\n  - ", package)[1:]
    folders = {}
    for item in items:
        named = re.match(r"`(\w+)/`", item)
        folders["" if item.startswith("top level") else named.group(1) if named else item[:20]] = item
    return folders


def modules_under(folder: Path) -> set[str]:
    """The modules of a package folder and, as `name/`, its subpackages with their modules."""
    names = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
    for sub in folder.iterdir():
        if sub.is_dir() and (sub / "__init__.py").exists():
            names |= {sub.name + "/"} | modules_under(sub)
    return names


def test_what_is_where_names_every_module_of_the_package():
    """One item per folder of src/vaefail (and one for the top level), in the order of the layers
    (tests/test_layers.py), each naming every module of its folder and nothing that is not there."""
    package = ROOT / "src" / "vaefail"
    folders = what_is_where_folders()
    subpackages = {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert list(folders) == ["", *(layer for layer in LAYERS if layer in subpackages)], \
        "README's 'What is where' has one item per subpackage, in the order of the layers"
    for folder, item in folders.items():
        expected = ({p.name for p in package.glob("*.py") if p.name != "__init__.py"} if folder == ""
                    else modules_under(package / folder))
        named = set(re.findall(r"`(\w+\.py|\w+/)`", item)) - {f"{folder}/"}
        where = f"README's item on {folder + '/' if folder else 'the top level'}"
        assert expected <= named, f"{where} does not name {sorted(expected - named)}"
        assert named <= expected, f"{where} names {sorted(named - expected)}, which it does not hold"
