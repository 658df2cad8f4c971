"""What a sweep trains: the spec (a YAML file, a dict or a built-in study), checked before any training.

::

    name: window-schedule
    description: Does growing the context window help at equal tokens?
    base: {preset: cpu, dataset: machado, max_tokens: 2000000}
    seeds: [1, 2, 3]
    variants:
      schedule: {}
      fixed: {current_context_window: 64}

``base`` holds the preset (default ``cpu``), the dataset (default: the preset's) and any
ModelConfig / TrainConfig field; ``vocab_size``, unless set, is the dataset's. The budget is
``max_steps``, ``max_tokens`` and/or ``max_minutes`` in ``base`` (or a ``budget:`` mapping
with ``steps``, ``tokens`` or ``minutes``): it replaces the preset's budget entirely. Steps
and tokens do not depend on the machine's load; minutes do. Each variant is a dict of
overrides on the base (a variant may change the budget, e.g. for an equal-wall-time
comparison); the first variant is the reference the others are compared with. A variant may
also set ``dataset``, e.g. to compare tokenizers: ``bpe-512: {dataset: machado-bpe512,
vocab_size: 512}`` (the vocabulary follows the dataset; writing it down keeps the spec
readable unprepared). Seeds come from ``seeds``: the base and the variants may not set
``seed``.

Built-in studies live in ``moelab/sweep/studies/<name>.yaml``; :func:`load_spec` accepts their
names as well as paths.

A sweep saves its spec *resolved* (:meth:`SweepSpec.resolved`): ``base`` lists every
ModelConfig and TrainConfig field, each variant the fields where it differs. The preset is
then only a label, so a saved spec trains exactly what it trained, whatever the presets
say later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from moelab.config.model import ModelConfig
from moelab.config.train import BUDGET_FIELDS, TrainConfig
from moelab.config.presets import build_configs, preset
from moelab.data import dataset_vocab

BUDGET_KINDS = {"steps": "max_steps", "tokens": "max_tokens", "minutes": "max_minutes"}
SPEC_KEYS = ("name", "description", "base", "budget", "seeds", "variants")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class SweepSpecError(ValueError):
    """A sweep spec that cannot be run; the message says what to change."""


@dataclass(frozen=True)
class SweepSpec:
    name: str
    preset: str
    dataset: str
    base: dict[str, Any]  # config overrides of every run, the three budget fields included
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, Any]]  # name -> overrides; the first is the reference
    description: str = ""
    run_names: dict[str, str] = field(default_factory=dict, compare=False)  # variant -> run-name part

    def configs(self, variant: str, seed: int) -> tuple[ModelConfig, TrainConfig]:
        """The model and training configs of one run (``vocab_size``, unless set, the dataset's)."""
        overrides = {**self.base, **{k: v for k, v in self.variants[variant].items() if k != "dataset"}}
        overrides.setdefault("vocab_size", dataset_vocab(self.dataset_of(variant)))
        return build_configs(self.preset, {**overrides, "seed": seed})

    def dataset_of(self, variant: str) -> str:
        """The prepared dataset a variant trains on: its own ``dataset`` or the base's."""
        return str(self.variants[variant].get("dataset", self.dataset))

    def run_name(self, variant: str, seed: int) -> str:
        """``<sweep>-<variant>-s<seed>``: the run's folders under reports/ and data/checkpoints/."""
        return f"{self.name}-{self.run_names[variant]}-s{seed}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "base": {"preset": self.preset, "dataset": self.dataset, **self.base},
                "seeds": list(self.seeds), "variants": self.variants}  # fmt: skip

    def resolved(self) -> dict[str, Any]:
        """The spec with every config field written out: ``base`` holds all fields of the first
        variant's configs (the seed aside), each variant the fields where it differs (and its
        ``dataset``). Loading it gives the same configs whatever the presets say later."""
        fields = {v: config_fields(*self.configs(v, self.seeds[0])) for v in self.variants}
        base = fields[next(iter(self.variants))]
        variants = {}
        for variant, values in fields.items():
            variants[variant] = {k: v for k, v in values.items() if v != base[k]}
            if "dataset" in self.variants[variant]:
                variants[variant]["dataset"] = self.dataset_of(variant)
        return {"name": self.name, "description": self.description,
                "base": {"preset": self.preset, "dataset": self.dataset, **base},
                "seeds": list(self.seeds), "variants": variants}  # fmt: skip


def config_fields(model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """Every field of a run's two configs in one mapping, the seed aside (a sweep's seeds list holds it)."""
    values = {**model.to_dict(), **train.to_dict()}
    values.pop("seed")
    return values


def builtin_studies() -> list[str]:
    """Names of the studies shipped in ``moelab/sweep/studies/``."""
    folder = resources.files("moelab.sweep") / "studies"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(source: SweepSpec | dict | str | Path, check_dataset: bool = True) -> SweepSpec:
    """A checked SweepSpec from a spec, a dict, a YAML file's path or a built-in study's name.

    Every run's configs are built here, so an unknown field or preset, a bad value, a
    variant that sets the seed, no or duplicate variants, an unknown budget kind and a
    missing dataset are errors before any training.
    """
    if isinstance(source, SweepSpec):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = source
    else:
        raw = _read_yaml(Path(source) if Path(source).suffix in (".yaml", ".yml") or Path(source).exists()
                         else _builtin_path(str(source)))  # fmt: skip
    spec = _parse(raw)
    for variant in spec.variants:
        try:
            spec.configs(variant, spec.seeds[0])
        except ValueError as err:
            raise SweepSpecError(f"sweep {spec.name!r}, variant {variant!r}: {err}") from None
    if check_dataset:
        from moelab.data import CorpusError, check_dataset_vocab, load_dataset

        for variant in spec.variants:  # a clear error naming the dataset when it is not prepared
            try:
                check_dataset_vocab(load_dataset(spec.dataset_of(variant)), spec.configs(variant, spec.seeds[0])[0].vocab_size)
            except (ValueError, CorpusError) as err:
                raise SweepSpecError(f"sweep {spec.name!r}, variant {variant!r}: {err}") from None
    return spec


def _builtin_path(name: str) -> Path:
    if name not in builtin_studies():
        raise SweepSpecError(
            f"{name!r} is neither a spec file (.yaml) nor a built-in study; built-in studies: {', '.join(builtin_studies())}"
        )
    return Path(str(resources.files("moelab.sweep") / "studies" / f"{name}.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with a key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise SweepSpecError(f"duplicate key(s) {', '.join(repeated)} {node.start_mark}".strip())
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SweepSpecError(f"sweep spec {path} does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SweepSpecError(f"{path} is not a readable YAML file: {err}") from None
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path} is not a sweep spec: expected a YAML mapping with keys name, base, seeds, variants")
    return raw


def _parse(raw: dict) -> SweepSpec:
    unknown = sorted(set(map(str, raw)) - set(SPEC_KEYS))
    if unknown:
        raise SweepSpecError(f"unknown key(s) {', '.join(unknown)} in the sweep spec; known: {', '.join(SPEC_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise SweepSpecError(f"name: give the sweep a folder-safe name (letters, digits, '-', '_', '.'), got {name!r}")
    base = dict(raw.get("base") or {})
    preset_name = base.pop("preset", "cpu")
    dataset = base.pop("dataset", None) or _preset_dataset(preset_name)
    base.update(_budget(base, raw.get("budget")))
    variants = _variants(raw.get("variants"))
    for where, overrides in [("base", base), *((f"variant {v!r}", o) for v, o in variants.items())]:
        if "seed" in overrides:
            raise SweepSpecError(f"{where} sets seed: a sweep's seeds come from its 'seeds' list")
    return SweepSpec(name, preset_name, dataset, base, _seeds(raw.get("seeds")), variants,
                     str(raw.get("description") or ""), _run_name_parts(variants))  # fmt: skip


def _preset_dataset(name: Any) -> str:
    """The dataset of the preset ``name``: a spec's base trains on it unless it names one."""
    try:
        return preset(str(name)).dataset
    except ValueError as err:
        raise SweepSpecError(f"base: {err}") from None


def _budget(base: dict, budget: Any) -> dict[str, Any]:
    """The three budget fields: those given (in base or ``budget``), the others None."""
    given = {k: base[k] for k in BUDGET_FIELDS if base.get(k) is not None}
    if budget is not None:
        if not isinstance(budget, dict):
            raise SweepSpecError(f"budget: expected a mapping such as {{tokens: 2000000}}, got {budget!r}")
        for kind, value in budget.items():
            if kind not in BUDGET_KINDS:
                raise SweepSpecError(f"budget: unknown kind {kind!r}; use steps, tokens or minutes")
            if BUDGET_KINDS[kind] in given:
                raise SweepSpecError(f"budget: {kind} is given twice (also as {BUDGET_KINDS[kind]} in base)")
            given[BUDGET_KINDS[kind]] = value
    if not given:
        raise SweepSpecError(
            "no budget: give budget: {steps: N}, {tokens: N} or {minutes: M} (or max_tokens etc. in base); "
            "steps or tokens make comparisons independent of the machine's load"
        )
    return {k: given.get(k) for k in BUDGET_FIELDS}


def _variants(raw: Any) -> dict[str, dict[str, Any]]:
    if not raw:
        raise SweepSpecError("variants: give at least one named variant, e.g. variants: {baseline: {}}")
    if isinstance(raw, list):  # [{name: overrides}, ...] keeps duplicates visible
        pairs = [item for entry in raw for item in (entry.items() if isinstance(entry, dict) else [(entry, {})])]
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise SweepSpecError(f"variants: expected a mapping of name -> overrides, got {raw!r}")
    names = [str(n) for n, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SweepSpecError(f"variants: duplicate name(s) {', '.join(repeated)}")
    for n, overrides in pairs:
        if overrides is not None and not isinstance(overrides, dict):
            raise SweepSpecError(f"variant {n!r}: expected a mapping of field: value overrides, got {overrides!r}")
    return {str(n): dict(o or {}) for n, o in pairs}


def _seeds(raw: Any) -> tuple[int, ...]:
    seeds = raw if isinstance(raw, list) else [raw] if raw is not None else []
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SweepSpecError(f"seeds: give a list of integers >= 0, e.g. [1, 2, 3]; got {raw!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepSpecError(f"seeds: each seed once, got {seeds}")
    return tuple(seeds)


def _run_name_parts(variants: dict[str, dict]) -> dict[str, str]:
    """Variant names as run-name parts: lower case, runs of other characters as one '-'."""
    parts = {v: re.sub(r"[^a-z0-9_.]+", "-", v.lower()).strip("-.") or "variant" for v in variants}
    clashes = sorted({p for p in parts.values() if list(parts.values()).count(p) > 1})
    if clashes:
        same = [v for v, p in parts.items() if p in clashes]
        raise SweepSpecError(f"variants {', '.join(map(repr, same))} give the same run name; rename one")
    return parts
