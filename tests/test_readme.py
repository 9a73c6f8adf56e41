"""The README's parameter table says what config.yaml and the schema say."""
import re
from pathlib import Path

import yaml

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


def test_what_is_where_names_every_module_of_the_package():
    text = (ROOT / "README.md").read_text()
    section = text.split("## What is where", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "src" / "vaefail"
    modules = [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    modules += [p.name + "/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    missing = [m for m in modules if f"`{m}`" not in section]
    assert not missing, f"README's 'What is where' does not name {missing}"
