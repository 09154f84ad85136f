"""One validated run configuration, composed of sections, shared by the CLI, `flwr run` and
the apps.

A run is described by a recipe (TOML, see ``sims/``) plus ``key=value`` overrides. Both are
merged, validated once by :class:`RunConfig` and then passed around as data. A run config is
composed of **sections**, each defined and validated by the package that owns it:

===========  ==========================================  =======================================
section      keys                                        owner
===========  ==========================================  =======================================
``data``     dataset, data_root, partition, num_clients  :class:`fedwon.datasets.DataSpec`
             alpha, dirichlet_scope, domains, ...
``model``    model, norm                                 :class:`fedwon.models.ModelSpec`
``train``    local_epochs, batch_size, lr, momentum,     :class:`fedwon.clients.TrainSpec`
             weight_decay, agc_clip, device
``server``   strategy, aggregator and its settings,      :class:`fedwon.strategies.ServerSpec`
             num_rounds, clients_per_round, ...
``dp``       dp.* (the recipe's ``[dp]`` table)          :class:`fedwon.privacy.DPConfig`
``engine``   engine, num_workers, gpus_per_client, ...   :class:`EngineSpec` (here)
``output``   checkpoint_every, track                     :class:`OutputSpec` (here)
===========  ==========================================  =======================================

plus the run's ``seed``. Recipe keys stay flat (``lr = 0.05``, ``[dp]`` for ``dp.*``): every
key name belongs to exactly one section, so ``--set lr=0.05`` and ``flwr run --run-config``
need no section prefix. This module only composes the sections and checks the rules that span
two of them (a method's norms, DP against the cohort, batch size 1 without BatchNorm); clients
receive the data, model, train and dp sections unchanged (:class:`fedwon.protocol.ClientConfig`).
Nothing downstream re-parses strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import tomli_w

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from fedwon.clients.spec import TrainSpec
from fedwon.common.section import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    Section,
    check_scalar,
)
from fedwon.datasets.spec import DataSpec
from fedwon.models.spec import ModelSpec
from fedwon.privacy.config import DP_PREFIX, DPConfig, DPRunCheck, check_dp_run
from fedwon.protocol import ClientConfig
from fedwon.strategies.methods import METHODS
from fedwon.strategies.participation import Participation
from fedwon.strategies.spec import ServerSpec

Scalar = bool | int | float | str


RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?[\w.\-]+:\d{1,5})$")


class EngineSpec(Section):
    """Where and how the simulation runs (never sent to clients)."""

    engine: Literal["fast", "flower"] = "fast"
    gpus_per_client: NonNegativeFloat = 1.0
    cpus_per_client: PositiveFloat = 1.0
    num_workers: int = -1  # fast engine: -1 = auto, 0 = in-process, N = N Ray actors
    ray_address: str = ""  # join an existing Ray cluster ("auto" or "ray://host:10001")
    client_state_budget_mb: NonNegativeFloat = (
        0.0  # fast engine: spill client states past this; 0 = never
    )

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, value: int) -> int:
        if value < -1:
            raise ValueError(
                f"must be -1 (auto), 0 (in-process) or a number of workers, got {value}"
            )
        return value

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str) -> str:
        if value and not RAY_ADDRESS.match(value):
            raise ValueError(
                f"{value!r} is not a Ray address; use 'auto', 'host:port' (a cluster's GCS, "
                "e.g. '10.0.0.1:6379') or 'ray://host:port' (Ray Client, e.g. port 10001)"
            )
        return value


TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")
"""The experiment trackers ``track`` may name (:mod:`fedwon.run.trackers` implements them)."""


class OutputSpec(Section):
    """What the run directory keeps, and which experiment trackers receive its rounds."""

    checkpoint_every: NonNegativeInt = 5  # rounds; 0 = never (the final state is always saved)
    track: tuple[str, ...] | None = None  # trackers, e.g. "tensorboard,mlflow"; None = none

    @field_validator("track", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> Any:
        """``"tensorboard,mlflow"`` (a recipe, ``--track``) or a list of names; an unknown name
        is refused here, with the valid ones, so a typo fails before anything runs."""
        if value is None:
            return None
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected tracker names, got {value!r}")
        names: list[str] = []
        for name in (v.strip().lower() for v in value):
            if name and name not in TRACKER_NAMES:
                raise ValueError(
                    f"unknown tracker {name!r} (valid trackers: {', '.join(TRACKER_NAMES)})"
                )
            if name and name not in names:
                names.append(name)
        return tuple(names) or None

    @field_serializer("track")
    def _comma_separated(self, track: tuple[str, ...] | None) -> str | None:
        """The recipe form (TOML, Flower's run config): comma-separated names."""
        return ",".join(track) if track else None


# The sections of a run config, in the order config.toml lists their keys.
SECTIONS: dict[str, type[Section]] = {
    "server": ServerSpec,
    "model": ModelSpec,
    "data": DataSpec,
    "train": TrainSpec,
    "engine": EngineSpec,
    "output": OutputSpec,
    "dp": DPConfig,
}
# Every flat recipe key (but ``seed`` and ``dp.*``) names the section it belongs to.
KEY_SECTION: dict[str, str] = {
    key: name
    for name, section in SECTIONS.items()
    if name != "dp"
    for key in section.model_fields
    if key != "seed"
}
# What a run gets where its section's own default differs (a data set described on its own
# keeps all its data; a run holds a tenth of each client's data back for validation).
RUN_DEFAULTS: dict[str, dict[str, Any]] = {"data": {"val_fraction": 0.1}}


def valid_keys() -> list[str]:
    """Every flat key a recipe may set."""
    return [*KEY_SECTION, "seed", "dp.*"]


class RunConfig(BaseModel):
    """Every setting of a run, in sections (see the module docstring). Built from flat recipe
    keys (``make_config({"lr": 0.05, "dp.enabled": True})``) or from sections; unknown keys are
    refused (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    server: ServerSpec = ServerSpec()
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec(**RUN_DEFAULTS["data"])
    train: TrainSpec = TrainSpec()
    engine: EngineSpec = EngineSpec()
    output: OutputSpec = OutputSpec()
    dp: DPConfig = DPConfig()
    seed: int = 0

    @field_validator("seed", mode="before")
    @classmethod
    def _strict_seed(cls, value: Any, info: ValidationInfo) -> Any:
        check_scalar(value, int)
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, values: Any) -> Any:
        """Flat keys (recipes, ``--set``, Flower's run config; ``dp.x`` for the ``[dp]``
        table) go to the section that owns them; the data section gets the run's seed."""
        if not isinstance(values, dict):
            return values
        nested: dict[str, dict[str, Any]] = {
            name: dict(RUN_DEFAULTS.get(name, {})) for name in SECTIONS
        }
        top: dict[str, Any] = {}
        for key, value in values.items():
            if key in SECTIONS and isinstance(value, dict | Section):
                # a whole section (``model`` is also the flat key naming the model family)
                given = value.model_dump() if isinstance(value, Section) else dict(value)
                if isinstance(value, DataSpec):
                    given.pop("seed", None)
                nested[key].update(given)
            elif key.startswith(DP_PREFIX):
                nested["dp"][key[len(DP_PREFIX) :]] = value
            elif key in KEY_SECTION:
                nested[KEY_SECTION[key]][key] = value
            elif key == "seed":
                top[key] = value
            else:
                raise ValueError(
                    f"unknown config key {key!r} (valid keys: {', '.join(valid_keys())})"
                )
        seed = top.get("seed", 0)
        if isinstance(seed, int) and not isinstance(seed, bool):
            nested["data"]["seed"] = seed
        return {**nested, **top}

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        """The rules that span sections."""
        norm = self.resolved_norm  # the method's norms (raises ValueError)
        server, data = self.server, self.data
        if server.clients_per_round > data.num_clients:
            raise ValueError(
                f"clients_per_round={server.clients_per_round} exceeds "
                f"num_clients={data.num_clients}"
            )
        self.dp_check()  # the dp.* settings against the cohort, schedule, population and model
        if server.min_clients > self.sampled_per_round:
            raise ValueError(
                f"min_clients={server.min_clients} exceeds the {self.sampled_per_round} clients "
                "sampled per round"
            )
        if self.train.batch_size == 1 and norm == "bn":
            raise ValueError(
                "batch_size=1 cannot train with norm='bn' (batch statistics are undefined); "
                "use norm='ws' (FedWon), 'gn', 'ln' or 'in'"
            )
        return self

    # ---- derived values -------------------------------------------------------------------
    @property
    def resolved_norm(self) -> str:
        """The norm actually built: ``auto`` is the method's default (FedWon: scaled WS)."""
        return METHODS[self.server.strategy].resolve_norm(self.model.norm)

    @property
    def model_spec(self) -> ModelSpec:
        """The model section with its norm resolved: what clients and the server build."""
        return self.model.model_copy(update={"norm": self.resolved_norm})

    @property
    def sampled_per_round(self) -> int:
        """Clients asked to train each round."""
        return self.server.sampled(self.data.num_clients)

    @property
    def participation(self) -> Participation:
        """Who trains when (``participation``: uniform sampling or cyclic groups)."""
        return self.server.schedule(self.data.num_clients)

    def client_config(self) -> ClientConfig:
        """What travels to clients: the data, model (norm resolved), train and dp sections as
        they are, the seed and the number of rounds (the horizon of a DP-SGD target)."""
        return ClientConfig(
            data=self.data,
            model=self.model_spec,
            train=self.train,
            dp=self.dp,
            seed=self.seed,
            num_rounds=self.server.num_rounds,
        )

    def dp_check(self) -> DPRunCheck:
        """The dp settings checked against the run (raises ValueError); sample rate, warnings."""
        return check_dp_run(
            self.dp,
            clients_per_round=self.sampled_per_round,
            min_clients=self.server.min_clients,
            num_clients=self.data.num_clients,
            norm=self.resolved_norm,
            agc_clip=self.train.agc_clip,
            proximal_mu=self.server.proximal_mu,
            participation=self.participation,
            num_rounds=self.server.num_rounds,
        )

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_flat(self) -> dict[str, Scalar]:
        """Flat recipe keys (unset optional keys left out, ``dp.*`` prefixed): what overrides,
        Flower's run config and ``replace`` use."""
        flat: dict[str, Scalar] = {}
        for name in SECTIONS:
            if name != "dp":
                flat.update(getattr(self, name).to_flat())
        flat["seed"] = self.seed
        return {**flat, **self.dp.to_flat()}

    def to_toml(self) -> str:
        """The resolved config as a recipe (flat keys; the dp settings as a ``[dp]`` table)."""
        top = {k: v for k, v in self.to_flat().items() if not k.startswith(DP_PREFIX)}
        return tomli_w.dumps({**top, "dp": self.dp.model_dump()})

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some flat keys changed (``None``: back to the key's default)."""
        return make_config(without_unset({**self.to_flat(), **changes}))


def _error_key(loc: tuple[Any, ...]) -> str:
    """The key a validation error is about, as a user writes it: the flat key (``lr``), or
    ``dp.<key>``; empty for a rule that names its keys itself."""
    parts = [str(p) for p in loc]
    if parts[:1] == ["dp"]:
        return ".".join(parts)
    return parts[-1] if len(parts) >= 2 or (parts and parts[0] not in SECTIONS) else ""


def _format_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        key = _error_key(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            if item["loc"][:1] == ("dp",):
                valid = ", ".join(f"{DP_PREFIX}{k}" for k in DPConfig.model_fields)
            else:
                valid = ", ".join(valid_keys())
            parts.append(f"unknown config key {key!r} (valid keys: {valid})")
        else:
            msg = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"{key}: {msg}" if key else msg)
    return "; ".join(parts)


def without_unset(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the keys an override unset (``--set key=`` gives ``None``), so each
    falls back to its default: how a recipe's ``server_lr`` is dropped to switch the
    aggregator from the command line."""
    return {k: v for k, v in values.items() if v is not None}


def make_config(values: dict[str, Any]) -> RunConfig:
    """Validate a flat dict of settings, raising :class:`ConfigError` with a one-line message."""
    try:
        return RunConfig(**values)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_format_error(err)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``lr=0.1``, ``strategy=fedbn``, ``x="a b"``).

    ``key=`` (nothing after ``=``) unsets the key: the value is ``None`` and the key falls back
    to its default (:func:`without_unset`). A bare word that is not valid TOML is taken as a
    string so ``--set strategy=fedbn`` works, and a bracketed list of bare words as a list of
    strings, so ``--set domains=[mnist,usps]`` means what ``domains = ["mnist", "usps"]``
    means in a recipe.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    raw = raw.strip()
    if not raw:
        return key, None
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw.startswith("[") and raw.endswith("]"):
            return key, [w.strip().strip("\"'") for w in raw[1:-1].split(",") if w.strip()]
        value = raw
    return key, value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Load a recipe TOML file as a flat dict (nested tables become dotted keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    try:
        return _flatten(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"recipe {str(path)!r} is not valid TOML: {err}") from None


def load_config(
    recipe: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> RunConfig:
    """Recipe file + overrides (``["k=v", ...]`` or a dict) → validated :class:`RunConfig`."""
    values: dict[str, Any] = read_recipe(recipe) if recipe else {}
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        values.update(parse_override(o) for o in overrides or [])
    return make_config(without_unset(values))


# Keys a resumed run may change: where and how fast it runs, how often it evaluates and
# checkpoints, how many failures a round tolerates, and how many rounds it has in total. Every
# other key (model, norm, data, partition, clients, seed, optimiser, strategy, any key added
# later) decides what is trained or who holds which data, so changing it would silently train
# a different federation from the checkpoint: refused.
MACHINE_KEYS = frozenset(
    {
        "engine",
        "device",
        "gpus_per_client",
        "cpus_per_client",
        "num_workers",
        "ray_address",
        "client_state_budget_mb",
        "data_root",  # the same files, moved
    }
)
"""Keys that say where a run ran, not what it computed (the study's records ignore them)."""
RESUMABLE_KEYS = MACHINE_KEYS | {
    "num_rounds",  # upwards from the checkpoint's round (checked against the checkpoint)
    "eval_every",
    "fraction_evaluate",
    "checkpoint_every",
    "min_clients",
    "round_timeout",
    "track",  # where the rounds are also sent, not what they compute
}


def resume_conflicts(stored: RunConfig, new: RunConfig) -> list[str]:
    """``key=old→new`` for each key whose change a resumed run cannot honour (empty: none)."""
    before, after = stored.to_flat(), new.to_flat()
    before["norm"], after["norm"] = stored.resolved_norm, new.resolved_norm
    return [
        f"{key}={before.get(key)!r}→{after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if key not in RESUMABLE_KEYS and before.get(key) != after.get(key)
    ]
