"""Run configuration: TOML file -> validated pydantic model (unknown keys are errors)."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sampler.errors import UserError
from sampler.core.leaves import LEAVES, store_name
from sampler.core.structural.components import KINDS, Component, check_component
from sampler.storage import location


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentConfig(_Section):
    """One ``[[model.components]]`` table (``sampler.core.structural.components``)."""
    kind: Literal[KINDS]
    #: prefix of the component's posterior variables (default: the kind).
    name: str = ""
    #: seasonal: steps per cycle (>= 2) and 0 (dummy form, period - 1 states) or k trigonometric harmonics.
    period: int = 0
    harmonics: int = 0
    #: ar: the order p.
    order: int = 0
    #: prior settings overriding ``DEFAULT_PRIORS[kind]`` (e.g. ``{ slope_sd = 0.05 }``).
    priors: dict[str, Any] = {}

    def component(self, input_dim: int) -> Component:
        return Component.create(self.kind, self.name, self.period, self.harmonics, self.order,
                                input_dim if self.kind == "regression" else 0, self.priors)


class ModelConfig(_Section):
    #: the general LG-SSM's state size; with ``components``, derived (one emission's state size)
    #: and, when given, checked.
    state_dim: Optional[int] = Field(None, ge=1)
    emission_dim: int = Field(ge=1)
    input_dim: int = Field(0, ge=0)
    #: leaves (general model) or variables (``components``: e.g. ``obs_sd``, ``damped_trend_damping``)
    #: held at their ``init`` value.
    frozen: list[str] = []
    #: initial values by leaf name (dotted or underscored): a number (times identity for square
    #: covariance leaves, filled otherwise) or a nested list of the leaf's shape; with ``components``,
    #: by variable name: a number (every emission) or a list per emission.
    init: dict[str, Any] = {}
    #: Kalman filter used in the log density: auto | information | covariance | parallel (associative
    #: scan over time; for long runs on few long series, docs/performance.md) | dynamax (reference).
    kalman: Literal["auto", "information", "covariance", "parallel", "dynamax"] = "auto"
    #: a structural model instead of the general LG-SSM (SPEC "Structural models").
    components: list[ComponentConfig] = []

    @model_validator(mode="after")
    def _structure(self):
        if not self.components:
            if self.state_dim is None:
                raise ValueError("state_dim: required key is missing (or give model.components)")
            self.__dict__["frozen"] = [_canonical_leaf(n, "model.frozen") for n in self.frozen]
            self.__dict__["init"] = {_canonical_leaf(k, "model.init"): v for k, v in self.init.items()}
            return self
        names = {"obs_sd"}
        for i, c in enumerate(self.components):
            try:
                check_component(c.kind, c.period, c.harmonics, c.order, self.input_dim, c.priors)
            except ValueError as err:
                raise ValueError(f"components[{i}]: {err}") from None
            component = c.component(self.input_dim)
            for p in (component.variable(name) for name, _, _ in component.parameters()):
                if p in names:
                    raise ValueError(f"components[{i}]: variable {p!r} is already taken; give the component a name")
                names.add(p)
        if self.input_dim and not any(c.kind == "regression" for c in self.components):
            raise ValueError(f"input_dim = {self.input_dim} but no regression component uses the inputs")
        derived = sum(c.component(self.input_dim).state_dim for c in self.components)
        if derived == 0:
            raise ValueError("components: no component has a state (add a level or trend)")
        if self.state_dim is not None and self.state_dim != derived:
            raise ValueError(f"state_dim = {self.state_dim} but the components have {derived} states per emission")
        self.__dict__["state_dim"] = derived
        for where, given in (("model.frozen", self.frozen), ("model.init", self.init)):
            for name in given:
                if name not in names:
                    raise ValueError(f"{where}: unknown variable {name!r}; the components' are {', '.join(sorted(names))}")
        return self

    def variable_sizes(self) -> dict[str, int]:
        """With ``components``: variable name -> length of its trailing axis (0: one value per
        emission), as ``sampler.core.structural.model.StructuralModel.variables``."""
        out = {}
        for c in self.components:
            component = c.component(self.input_dim)
            out.update({component.variable(name): size for name, _, size in component.parameters()})
        out["obs_sd"] = 0
        return out


class DataConfig(_Section):
    """Where the emissions come from (``sampler.data`` reads them).

    ``path``: an ``.npz`` (arrays ``emissions``, ``inputs``, ``init_<leaf>``, ``true_<leaf>``); a
    long-format table (``.csv``, ``.parquet``/``.pq``) with one row per (dataset, [sequence,] time);
    or an xarray file (``.nc``/``.nc4``/``.h5``/``.cdf`` netCDF, or a ``.zarr`` store) with named dims.
    The name keys below are table columns, or dims of the xarray file.
    """
    path: str
    #: column / dim naming the dataset (one posterior per distinct value).
    dataset: str = "dataset"
    #: optional column / dim naming the sequence within a dataset ("" = one sequence per dataset).
    sequence: str = ""
    #: column / dim of the time index (sorted; the union over datasets is the time axis).
    time: str = "time"
    #: table: the column naming the emission in a variable/value ("long-long") layout ("" = one
    #: column per emission); xarray: the dim of the emission axis of a single data variable.
    variable: str = ""
    #: table with ``variable``: the column holding the values.
    value: str = "value"
    #: emission names in model order: table columns, values of ``variable``, or xarray data variables;
    #: [] = every other column (variable value, data variable) in order of appearance.
    emissions: list[str] = []
    #: minimum observed time steps of every (dataset, sequence) that has any observation.
    min_length: int = Field(1, ge=1)
    #: centre and scale every dataset's emissions (per emission) before sampling; the centre and
    #: scale are kept with the data and undone for forecasts (``sampler.data.to_data_scale``).
    standardize: bool = False
    #: the scale used by ``standardize``: "std" of the values, or "diff_std" of their first
    #: differences (suits slowly moving, random-walk-like series).
    scale_by: Literal["std", "diff_std"] = "std"


class SamplerConfig(_Section):
    #: "auto" (= Gibbs), "gibbs", "chees" (cross-chain ChEES-tuned jittered HMC), "nuts", "hmc".
    algorithm: Literal["auto", "gibbs", "nuts", "hmc", "chees"] = "auto"
    num_chains: int = Field(4, ge=1)
    num_warmup: int = Field(500, ge=0)  # adaptation (NUTS, HMC) or burn-in (Gibbs) draws
    num_draws: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    #: leapfrog steps per HMC draw (the seed uses 5); NUTS chooses its own.
    num_integration_steps: int = Field(5, ge=1)
    max_num_doublings: int = Field(10, ge=1, le=15)
    target_acceptance_rate: float = Field(0.8, gt=0.0, lt=1.0)
    #: step size when num_warmup = 0 (no adaptation).
    initial_step_size: float = Field(0.1, gt=0.0)
    dtype: Literal["float64", "float32"] = "float64"


class RunConfig(_Section):
    dir: str = "runs/run"
    checkpoint_every: int = Field(100, ge=1)
    workers: int = Field(1, ge=0)
    #: datasets per shard (a unit of work and of checkpointing); 0 = all datasets in one shard.
    shard_size: int = Field(256, ge=0)
    #: checkpoints kept per shard (at least 2, so a damaged latest one falls back to the previous).
    keep_checkpoints: int = Field(2, ge=2)


class Config(_Section):
    model: ModelConfig
    data: DataConfig
    sampler: SamplerConfig = SamplerConfig()
    run: RunConfig = RunConfig()

    def resolved_algorithm(self) -> str:
        """The kernel that ``algorithm = "auto"`` stands for: blocked Gibbs, since every leaf of the
        general model has a conjugate conditional (with or without frozen leaves), so it needs no
        tuning and no gradients (its speed against NUTS and ChEES: docs/performance.md); for
        structural components, their non-centred conjugate Gibbs sampler (docs/structural.md)."""
        return "gibbs" if self.sampler.algorithm == "auto" else self.sampler.algorithm


#: config keys whose change alters the draws (resume refuses when they differ).
RESULT_KEYS = ("model", "data", "sampler", "run.checkpoint_every", "run.shard_size")


def _canonical_leaf(name: str, where: str) -> str:
    for leaf in LEAVES:
        if name in (leaf, store_name(leaf)):
            return leaf
    raise ValueError(f"unknown parameter leaf {name!r} in {where}; known: {', '.join(LEAVES)}")


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(raw: dict, key: str, value, sep: str = ".") -> dict:
    """Set ``raw[a][b]... = value`` for the key ``a<sep>b<sep>...``, creating tables on the way."""
    *parents, leaf = key.strip().split(sep)
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part} is not a table")
    node[leaf] = value
    return raw


def apply_overrides(raw: dict, overrides: list[str] = (), settings: Optional[dict] = None) -> dict:
    """Apply ``KEY=VALUE`` overrides (``--set``: dotted keys, TOML values, bare words are strings) and
    ``settings`` (the Python API's ``**overrides``: Python values, ``__`` for the dots)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. sampler.num_draws=200")
        key, value = item.split("=", 1)
        set_dotted(raw, key, _parse_value(value.strip()))
    for key, value in (settings or {}).items():
        set_dotted(raw, key, value, sep="__")
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    return f"{source}: {loc}: {msg}"


def from_dict(raw: dict, source: str = "config", base_dir: Optional[Path] = None) -> "Config":
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, source)) from None
    if base_dir is not None:  # relative local paths are relative to the config file; URLs stay
        for section, key in (("data", "path"), ("run", "dir")):
            value = getattr(getattr(cfg, section), key)
            if not location.is_url(value):
                path = location.location(value)  # a file:// URL is a local path
                setattr(getattr(cfg, section), key, str(path if path.is_absolute() else (base_dir / path).resolve()))
    return cfg


def load(path, overrides: Optional[list[str]] = None, **settings) -> Config:
    """Read a TOML config; relative paths are relative to the config file.

    Args:
        path: the TOML file.
        overrides: ``KEY=VALUE`` strings (``--set``).
        settings: dotted-key overrides as Python values with ``__`` for dots,
            e.g. ``sampler__num_draws=200`` (the Python API's ``**overrides``).
    """
    path = location.location(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML: {err}") from None
    apply_overrides(raw, list(overrides or []), settings)
    # a run dir's config.toml holds absolute paths or URLs: one on an object store needs no base
    return from_dict(raw, str(path), None if location.is_remote(path) else path.parent.resolve())


def to_toml(cfg: Config) -> str:
    """Serialise the resolved config (the run dir's ``config.toml``)."""
    lines = []
    for section, model in (("model", cfg.model), ("data", cfg.data), ("sampler", cfg.sampler), ("run", cfg.run)):
        lines.append(f"[{section}]")
        for key, value in model.model_dump().items():
            if key in ("init", "components"):
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    if cfg.model.init:
        lines.append("[model.init]")
        for key, value in cfg.model.init.items():
            lines.append(f'"{key}" = {_toml_value(value)}')
        lines.append("")
    for component in cfg.model.components:
        lines.append("[[model.components]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in component.model_dump().items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")


def field_default(dotted_key: str) -> Any:
    """The default of a dotted config key (``data.standardize`` -> False); a sentinel when it has none."""
    section, _, field = dotted_key.partition(".")
    sections = {"model": ModelConfig, "data": DataConfig, "sampler": SamplerConfig, "run": RunConfig}
    info = sections[section].model_fields.get(field) if section in sections else None
    if info is None or info.is_required():
        return _NO_DEFAULT
    return info.get_default(call_default_factory=True)


_NO_DEFAULT = object()


def result_fingerprint(cfg: Config) -> dict[str, Any]:
    """The settings that change the draws, flattened to dotted keys (compared on resume)."""
    dump = cfg.model_dump()
    flat: dict[str, Any] = {}
    for key in RESULT_KEYS:
        section, _, field = key.partition(".")
        if field:
            flat[key] = dump[section][field]
        else:
            for sub, value in dump[section].items():
                flat[f"{section}.{sub}"] = value
    return flat
