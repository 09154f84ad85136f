"""One validated run configuration, shared by the CLI, `flwr run` and the apps.

A run is described by a recipe (TOML, see ``sims/``) plus ``key=value`` overrides. Both are
merged, validated once by :class:`RunConfig` and then passed around as data: the server sends
the client-side part inside every message, so simulation, ``flwr run`` and a real deployment
all read exactly the same values. Nothing downstream re-parses strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomllib
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

Scalar = bool | int | float | str

STRATEGY_NAMES = ("fedavg", "fedbn", "fedwon")
ENGINE_NAMES = ("fast", "flower")


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key and the valid choices."""


class RunConfig(BaseModel):
    """Every setting of a run. Unknown keys are refused (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # what is learned
    strategy: Literal["fedavg", "fedbn", "fedwon"] = "fedavg"
    model: str = "cnn"
    norm: str = "auto"  # auto: "ws" for fedwon, "bn" otherwise
    # data
    dataset: str = "digits-embedded"
    data_root: str = ""
    partition: Literal["domain", "iid", "dirichlet"] = "domain"
    num_clients: int = 5
    alpha: float = 0.5
    dirichlet_scope: Literal["domain", "global"] = "domain"
    domains: str = ""  # comma-separated subset; empty = all domains of the data set
    train_per_domain: int = 0  # 0 = data set default
    test_per_domain: int = 0
    image_size: int = 0  # 0 = data set default
    val_fraction: float = 0.1  # share of each client's training data held out for validation
    # rounds and sampling
    num_rounds: int = 10
    clients_per_round: int = 0  # 0 = use fraction_train
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    eval_every: int = 1
    min_clients: int = 1  # fewest successful replies a round may aggregate
    # local training
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    agc_clip: float = 0.0  # adaptive gradient clipping factor; 0 = off
    seed: int = 0
    # where it runs
    engine: Literal["fast", "flower"] = "fast"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus_per_client: float = 1.0
    cpus_per_client: float = 1.0
    num_workers: int = -1  # fast engine: -1 = auto, 0 = in-process, N = N Ray actors
    ray_address: str = ""  # join an existing Ray cluster ("auto" or "ray://host:10001")
    client_state_budget_mb: float = 0.0  # fast engine: spill client states past this; 0 = never
    checkpoint_every: int = 5  # rounds; 0 = never (the final state is always saved)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from fedwon.models import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; choose one of {sorted(MODELS)}")
        return value

    @field_validator("norm")
    @classmethod
    def _known_norm(cls, value: str) -> str:
        from fedwon.nn import NORM_KINDS

        if value != "auto" and value not in NORM_KINDS:
            raise ValueError(f"unknown norm {value!r}; choose 'auto' or one of {list(NORM_KINDS)}")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from fedwon.datasets import DATASETS

        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; choose one of {sorted(DATASETS)}")
        return value

    @field_validator(
        "num_clients", "num_rounds", "local_epochs", "batch_size", "eval_every", "min_clients"
    )
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("clients_per_round", "train_per_domain", "test_per_domain", "image_size")
    @classmethod
    def _non_negative_int(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("fraction_train", "fraction_evaluate")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("val_fraction")
    @classmethod
    def _val_fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1) (0 = no validation split), got {value}")
        return value

    @field_validator("lr", "alpha", "cpus_per_client")
    @classmethod
    def _positive_float(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    @field_validator(
        "momentum", "weight_decay", "agc_clip", "gpus_per_client", "client_state_budget_mb"
    )
    @classmethod
    def _non_negative_float(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        norm = self.resolved_norm
        if self.strategy == "fedwon" and norm not in ("ws", "none"):
            raise ValueError(
                f"strategy 'fedwon' trains a normalization-free model; got norm={norm!r}. "
                "Use norm='ws' (scaled weight standardization) or 'none'"
            )
        if self.strategy == "fedbn" and norm in ("ws", "none"):
            raise ValueError(
                f"strategy 'fedbn' keeps normalization layers local, but norm={norm!r} has "
                "none; use norm='bn' (or gn/ln/in), or strategy 'fedwon'"
            )
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}"
            )
        if self.min_clients > self.sampled_per_round:
            raise ValueError(
                f"min_clients={self.min_clients} exceeds the {self.sampled_per_round} clients "
                "sampled per round"
            )
        if self.batch_size == 1 and norm == "bn":
            raise ValueError(
                "batch_size=1 cannot train with norm='bn' (batch statistics are undefined); "
                "use norm='ws' (FedWon), 'gn', 'ln' or 'in'"
            )
        return self

    # ---- derived values -------------------------------------------------------------------
    @property
    def resolved_norm(self) -> str:
        """The norm actually built: FedWon's default is scaled WS, everyone else's BN."""
        if self.norm != "auto":
            return self.norm
        return "ws" if self.strategy == "fedwon" else "bn"

    @property
    def sampled_per_round(self) -> int:
        """Clients asked to train each round (Flower samples max(fraction * n, minimum))."""
        if self.clients_per_round:
            return self.clients_per_round
        return max(1, int(self.num_clients * self.fraction_train))

    @property
    def domain_list(self) -> tuple[str, ...] | None:
        names = tuple(d.strip() for d in self.domains.split(",") if d.strip())
        return names or None

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_flat(self) -> dict[str, Scalar]:
        """Scalars only: the form Flower's run config and ConfigRecord carry."""
        return dict(self.model_dump())

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_flat())

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some keys changed."""
        return make_config({**self.to_flat(), **changes})


def _format_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            valid = ", ".join(RunConfig.model_fields)
            parts.append(f"unknown config key {key!r} (valid keys: {valid})")
        else:
            msg = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"{key}: {msg}" if key != "config" else msg)
    return "; ".join(parts)


def make_config(values: dict[str, Any]) -> RunConfig:
    """Validate a flat dict of settings, raising :class:`ConfigError` with a one-line message."""
    try:
        return RunConfig(**values)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_format_error(err)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a TOML value (``lr=0.1``, ``strategy=fedbn``, ``x="a b"``).

    A bare word that is not valid TOML is taken as a string so ``--set strategy=fedbn`` works.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
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
    return make_config(values)
