"""The command line's configs: conf/ (the pipeline's Hydra groups) composed with the user's overrides.

One source of truth: `qlora finetune quant=fp4 train.max_steps=20` composes conf/config.yaml with those
Hydra overrides, exactly as `dvc exp run -S ...` composes params.yaml, and validates the result with
`qlora.pipeline.params.pipeline_config`. A few shorthands for the command line, translated here:

- `model=<option>` selects conf/model/<option>.yaml as the causal model (`model@models.causal=...`);
  `model=<folder or hub id>` any transformers model (source PRETRAINED); `model.<key>=v` sets
  `models.causal.<key>`;
- `data.path=<file or dataset>` without `data.source` selects the user's data: JSONL for a `.jsonl` /
  `.json` file, else HF_DATASET.

Every mistake is one `UsageError` line naming the override and what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

GROUP_TARGETS = {"model": "model@models.causal"}  # shorthand group -> the pipeline's package
CAUSAL_PREFIX = "models.causal"


class UsageError(ValueError):
    """A command-line mistake, as one line naming the argument and what is allowed."""


def find_config_dir(explicit: str | Path | None = None) -> Path:
    """conf/ of the working directory (a checkout), else the one beside the installed package."""
    candidates = [Path(explicit)] if explicit else [Path.cwd() / "conf", Path(__file__).resolve().parents[2] / "conf"]
    for c in candidates:
        if (c / "config.yaml").is_file():
            return c.resolve()
    where = explicit or " or ".join(map(str, candidates))
    raise UsageError(f"--config-dir: no conf/config.yaml in {where} (run qlora in the repository, or pass --config-dir)")


def group_options(conf: Path) -> dict[str, list[str]]:
    """{group: [option, ...]} of conf/ (conf/quant/nf4.yaml -> quant: nf4)."""
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in sorted(conf.iterdir()) if d.is_dir()}


@dataclasses.dataclass(frozen=True)
class Overrides:
    hydra: list[str]  # what Hydra composes
    given: frozenset[str]  # top-level keys the user set (e.g. "quant", "data", "train")


def translate(args: list[str], conf: Path) -> Overrides:
    """The user's overrides as Hydra overrides of conf/config.yaml (see the module doc).

    Raises:
        UsageError: not `key=value`, or a group option that does not exist (lists those that do).
    """
    options = group_options(conf)
    out, given, keys = [], set(), []
    for arg in args:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+~")
        if not sep or not bare:
            raise UsageError(f"{arg!r}: expected an override key=value (e.g. quant=fp4, train.max_steps=20, data.path=my.jsonl)")
        group = bare.split("@")[0]
        keys.append(bare)
        if group in options and "." not in group:
            if value not in options[group]:
                near = _did_you_mean(value, options[group])
                if group == "model" and "@" not in bare and (Path(value).exists() or not near):  # a folder or hub id
                    name = value.rstrip("/").split("/")[-1] or value
                    out += [f"{CAUSAL_PREFIX}.source=PRETRAINED", f"{CAUSAL_PREFIX}.path={value}", f"{CAUSAL_PREFIX}.name={name}"]
                    given.add("model")
                    continue
                raise UsageError(f"{bare}={value}: expected one of {', '.join(options[group])} (conf/{group}/)"
                                 + (", or a model folder or hub id" if group == "model" else "") + near)  # fmt: skip
            out.append(f"{key.replace(group, GROUP_TARGETS[group], 1) if group in GROUP_TARGETS and '@' not in bare else key}={value}")
        elif bare.startswith("model."):
            out.append(f"{key.replace('model.', CAUSAL_PREFIX + '.', 1)}={value}")
        else:
            out.append(arg)
        given.add(group.split(".")[0])
    if "data.path" in keys and "data.source" not in keys and "data" not in keys:
        path = next(a.partition("=")[2] for a in args if a.lstrip("+~").startswith("data.path="))
        out.append(f"data.source={'JSONL' if path.lower().endswith(('.jsonl', '.json')) else 'HF_DATASET'}")
    return Overrides(out, frozenset(given))


def _did_you_mean(value: str, choices) -> str:
    """"; did you mean smollm2?" for a near miss, else ""."""
    import difflib

    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def compose(conf: Path, overrides: Overrides):
    """The validated PipelineConfig of conf/config.yaml with `overrides`.

    Raises:
        UsageError: Hydra refuses an override (unknown key, bad syntax), or a value is invalid
            (`ConfigError`: the dotted key and what is allowed).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from qlora.checks import ConfigError
    from qlora.pipeline.params import pipeline_config

    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=overrides.hydra)
        data = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UsageError(_hydra_message(e, conf)) from None
    try:
        return pipeline_config(data)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _hydra_message(error: Exception, conf: Path) -> str:
    """Hydra's several-line message as one line; an unknown key lists the keys of its section."""
    text = " ".join(str(error).split())
    full_key = getattr(getattr(error, "__cause__", None), "full_key", None) or _between(text, "full_key: ", " ")
    if "not in struct" in text or "Could not override" in text:
        key = full_key or _between(text, "Could not override '", "'")
        if key:
            section, _, leaf = key.rpartition(".")
            known = _section_keys(conf, section)
            return f"{key}: no such key" + (f"; {section or 'the config'} has: {', '.join(known)}" if known else "") + _key_hint(conf, key)
    return text


def _key_hint(conf: Path, key: str) -> str:
    """"; did you mean data.perplexity_windows?": the same key in another section, or a near miss in its own."""
    section, _, leaf = key.rpartition(".")
    elsewhere = [k for k in _leaf_keys(conf) if k.rpartition(".")[2] == leaf and k != key and not k.startswith(("models.", "quants.", "ablation."))]
    if elsewhere:
        return f"; did you mean {' or '.join(sorted(elsewhere)[:2])}?"
    return _did_you_mean(leaf, _section_keys(conf, section)).replace("mean ", f"mean {section}." if section else "mean ")


def _leaf_keys(conf: Path) -> list[str]:
    """Every dotted key of the composed config (sections of the pipeline included)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf), version_base=None):
        data = OmegaConf.to_container(hydra_compose(config_name="config"), resolve=True)
    found: list[str] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            found.append(prefix)

    walk("", data)
    return found


def _between(text: str, start: str, end: str) -> str | None:
    if start not in text:
        return None
    rest = text.split(start, 1)[1]
    return rest.split(end, 1)[0] if end in rest else rest


def _section_keys(conf: Path, section: str) -> list[str]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(conf), version_base=None):
        data = OmegaConf.to_container(hydra_compose(config_name="config"), resolve=True)
    for part in filter(None, section.split(".")):
        data = data.get(part) if isinstance(data, dict) else None
    return sorted(data) if isinstance(data, dict) else []
