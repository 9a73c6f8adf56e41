"""Resolve, validate and fingerprint the workflow configuration.

config.yaml holds `scale`, `device`, `outdir`, and `presets`; a setting given at the top
level (in the file or with `snakemake --config KEY=VALUE`) overrides the chosen preset.
The resolved settings are validated against workflow/schemas/config.schema.yaml and
then checked for constraints a schema cannot express.  Errors name the key, the value,
what is allowed, and how to fix it.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
RUN_KEYS = ("scale", "device", "outdir", "redraw", "presets")   # not settings: they do not change results


class ConfigError(ValueError):
    pass


def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return (f"unknown config key(s) {', '.join(map(repr, extra))} in {where}; "
                f"allowed keys: {allowed}")
    allowed = []
    for key in ("enum", "type", "minimum", "maximum", "exclusiveMinimum", "minItems"):
        if key in schema:
            allowed.append(f"{key} {schema[key]}")
    if error.validator == "pattern" and "description" in schema:
        allowed.append(schema["description"])
    hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
    return f"config key {where!r} = {error.instance!r}: {error.message}{hint}"


def validate(config: dict) -> None:
    """Validate a raw config (as Snakemake holds it) against the JSON schema."""
    validator = jsonschema.Draft7Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors)
        raise ConfigError(f"invalid configuration:\n  {lines}\n"
                          "Fix config.yaml or the --config override that sets it.")


def check_yaml_syntax(path: str | Path) -> None:
    """Raise ConfigError naming the line and column of a YAML syntax error in `path` (a
    missing file is left to Snakemake's own message)."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = " ".join(str(x) for x in (getattr(error, "context", None), getattr(error, "problem", None)) if x)
        raise ConfigError(f"{path} is not valid YAML: {what or error} at {where}; fix that line "
                          "(indent with spaces, not tabs; put a space after each ':')") from None


def _from_text(value: str, schema: dict):
    """`value` as the JSON type `schema` asks for, if the text is one; else unchanged."""
    kind = schema.get("type")
    if kind == "integer" and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        return int(value)
    if kind == "number":
        try:
            return int(value) if re.fullmatch(r"[+-]?[0-9]+", value.strip()) else float(value)
        except ValueError:
            return value
    if kind == "boolean" and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if kind in ("array", "object"):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, list if kind == "array" else dict) else value
    return value


def _typed_like_schema(value, schema: dict, root: dict):
    while "$ref" in schema:                       # "#/definitions/settings/properties/epochs"
        node = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    if isinstance(value, str):
        value = _from_text(value, schema)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_typed_like_schema(v, schema["items"], root) for v in value]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: _typed_like_schema(v, properties[k], root) if k in properties else v
                for k, v in value.items()}
    return value


def typed_like_schema(config: dict) -> dict:
    """A copy of `config` with text converted to the schema's types where it parses as them.

    `snakemake --config 'ss_alphas=[0.0,1.0]'` hands over the list items as text ('0.0');
    converted here, a list can be overridden on the command line like a number.  Text that
    does not parse stays text, and validation names it."""
    return _typed_like_schema(config, load_schema(), load_schema())


def resolve(config: dict) -> dict:
    """Validated settings of the chosen scale, with top-level overrides applied."""
    config = typed_like_schema(config)
    validate(config)
    scale = config["scale"]
    settings = dict(config["presets"][scale])
    settings.update({k: v for k, v in config.items() if k not in RUN_KEYS})
    required = load_schema()["definitions"]["settings"]["properties"]
    missing = sorted(set(required) - set(settings))
    if missing:
        raise ConfigError(f"preset {scale!r} leaves these settings unset: {', '.join(missing)}; "
                          "add them to the preset or the top level of config.yaml")
    _check_constraints(settings)
    return settings


def _check_constraints(s: dict) -> None:
    for prefix in ("", "ss_"):
        random, gt = s[f"{prefix}restarts_random"], s[f"{prefix}restarts_gt"]
        if random + gt < 1:
            raise ConfigError(f"{prefix}restarts_random + {prefix}restarts_gt = {random} + {gt}: "
                              "at least one restart is needed")
    if s["n_train"] % s["batch_size"]:
        raise ConfigError(f"n_train = {s['n_train']} is not a multiple of batch_size = {s['batch_size']}; "
                          "choose n_train so that every epoch has whole minibatches")
    for key in ("n_valid", "n_test"):
        if s["knn_k"] > 2 * s[key] - 2:
            raise ConfigError(f"knn_k = {s['knn_k']} is too large for {key} = {s[key]} "
                              f"(at most {2 * s[key] - 2})")
        if s["mi_neighbours"] >= s[key]:
            raise ConfigError(f"mi_neighbours = {s['mi_neighbours']} must be below {key} = {s[key]}")


def settings_hash(settings: dict) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def output_dir(config: dict) -> str:
    return str(config.get("outdir") or f"results/{config['scale']}")


def require_cuda(configured: str) -> None:
    """Raise ConfigError unless torch sees a GPU here (`configured`: the config's device)."""
    import torch
    if not torch.cuda.is_available():
        why = "device=cuda was asked for" if configured == "cuda" else "device=auto chose cuda (a GPU driver is visible)"
        raise ConfigError(f"{why}, but torch sees no GPU on this machine (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda}); install a CUDA build of torch (README, "
                          "'GPU and cluster') or run with --config device=cpu")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when an NVIDIA GPU is visible, else 'cpu' (without importing torch)."""
    if device != "auto":
        return device
    import glob
    import shutil
    return "cuda" if glob.glob("/dev/nvidia[0-9]*") or shutil.which("nvidia-smi") else "cpu"
