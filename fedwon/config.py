"""One validated run configuration, shared by the CLI, `flwr run` and the apps.

A run is described by a recipe (TOML, see ``sims/``) plus ``key=value`` overrides. Both are
merged, validated once by :class:`RunConfig` and then passed around as data: the server sends
the client-side part inside every message, so simulation, ``flwr run`` and a real deployment
all read exactly the same values. Nothing downstream re-parses strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
    field_validator,
    model_validator,
)

from fedwon.privacy.config import DP_PREFIX, DPConfig, DPRunCheck, check_dp_run
from fedwon.strict_scalars import check_scalar

if TYPE_CHECKING:
    from fedwon.protocol import ClientConfig

Scalar = bool | int | float | str


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key and the valid choices."""


RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?[\w.\-]+:\d{1,5})$")


class RunConfig(BaseModel):
    """Every setting of a run. Unknown keys are refused (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # what is learned: the method (what is shared) and Flower's server algorithm
    strategy: str = "fedavg"  # fedwon.strategies.METHODS
    aggregator: str = "fedavg"  # fedwon.strategies.AGGREGATORS
    server_lr: float | None = None  # None = the aggregator's own default
    server_momentum: float | None = None  # fedavgm
    beta_1: float | None = None  # fedadam, fedyogi, fedadagrad
    beta_2: float | None = None
    tau: float | None = None
    server_weight_decay: float | None = None  # lamb
    proximal_mu: float = 0.0  # fedprox: (mu/2)·||w − w_global||² added to the local loss
    model: str = "cnn"
    norm: str = "auto"  # auto: "ws" for fedwon, "bn" otherwise
    # data
    dataset: str = "digits-embedded"
    data_root: str = ""
    partition: str = "domain"  # fedwon.datasets.PARTITIONERS
    num_clients: int = 5
    alpha: float = 0.5
    dirichlet_scope: str = "domain"  # fedwon.datasets.DIRICHLET_SCOPES
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
    # differential privacy: the [dp] table / dp.* keys (fedwon.privacy.DPConfig)
    dp: DPConfig = DPConfig()

    @field_validator("strategy")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from fedwon.strategies.aggregators import AGGREGATORS
        from fedwon.strategies.methods import METHODS

        if value not in METHODS and value in AGGREGATORS:
            raise ValueError(
                f"{value!r} is an aggregator, not a method: set aggregator={value!r} and strategy "
                f"to one of {sorted(METHODS)} (what is shared)"
            )
        return _choice(value, "strategy", METHODS)

    @field_validator("aggregator")
    @classmethod
    def _known_aggregator(cls, value: str) -> str:
        from fedwon.strategies.aggregators import AGGREGATORS

        return _choice(value, "aggregator", AGGREGATORS)

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, value: str) -> str:
        from fedwon.datasets import PARTITIONERS

        return _choice(value, "partition", PARTITIONERS)

    @field_validator("dirichlet_scope")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        from fedwon.datasets import DIRICHLET_SCOPES

        return _choice(value, "dirichlet_scope", DIRICHLET_SCOPES)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return check_scalar(value, field.annotation) if field is not None else value

    @field_validator("domains", mode="before")
    @classmethod
    def _domain_names(cls, value: Any) -> Any:
        """A list of names (TOML ``domains = ["mnist", "usps"]``) is the comma-separated form."""
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return ",".join(value)
        return value

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

    @field_validator(
        "clients_per_round",
        "train_per_domain",
        "test_per_domain",
        "image_size",
        "checkpoint_every",
        "seed",
    )
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
        "momentum",
        "weight_decay",
        "agc_clip",
        "gpus_per_client",
        "client_state_budget_mb",
        "proximal_mu",
    )
    @classmethod
    def _non_negative_float(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("server_lr", "tau")
    @classmethod
    def _positive_optional(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError(f"must be > 0, got {value}")
        return value

    @field_validator("server_weight_decay")
    @classmethod
    def _non_negative_optional(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("server_momentum", "beta_1", "beta_2")
    @classmethod
    def _unit_interval(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value

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

    @model_validator(mode="before")
    @classmethod
    def _nest_dp(cls, values: Any) -> Any:
        """Flat ``dp.clip_norm``-style keys (recipes' ``[dp]`` table, ``--set dp.x=...``,
        Flower's run config) become the ``dp`` sub-config."""
        if not isinstance(values, dict) or not any(k.startswith(DP_PREFIX) for k in values):
            return values
        nested = dict(values.get("dp") or {})
        rest = {}
        for key, value in values.items():
            if key.startswith(DP_PREFIX):
                nested[key[len(DP_PREFIX) :]] = value
            elif key != "dp":
                rest[key] = value
        return {**rest, "dp": nested}

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
        from fedwon.strategies.aggregators import check_aggregator_settings

        check_aggregator_settings(self)
        self.dp_check()  # the dp.* settings against the cohort, population and model
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

    def client_config(self) -> ClientConfig:
        """The part of this config that local training needs (what travels to clients)."""
        from fedwon.protocol import ClientConfig

        return ClientConfig(
            model=self.model,
            norm=self.resolved_norm,
            dataset=self.dataset,
            partition=self.partition,
            num_clients=self.num_clients,
            seed=self.seed,
            data_root=self.data_root,
            alpha=self.alpha,
            dirichlet_scope=self.dirichlet_scope,
            domains=self.domains,
            train_per_domain=self.train_per_domain,
            test_per_domain=self.test_per_domain,
            image_size=self.image_size,
            val_fraction=self.val_fraction,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            agc_clip=self.agc_clip,
            device=self.device,
            **self.dp_sgd_settings(),
        )

    def dp_sgd_settings(self) -> dict[str, Any]:
        """The ``dp_sgd*`` fields of :class:`ClientConfig`: what a client needs to run DP-SGD
        (``dp.level = "sample"``); empty (DP-SGD off) otherwise."""
        dp = self.dp
        if not (dp.enabled and dp.level == "sample"):
            return {}
        return {
            "dp_sgd": True,
            "dp_sgd_clip_norm": dp.clip_norm,
            "dp_sgd_clipping": dp.clipping,
            "dp_sgd_split": dp.split,
            "dp_sgd_noise_multiplier": dp.noise_multiplier,
            "dp_sgd_target_epsilon": dp.target_epsilon,
            "dp_sgd_delta": dp.delta,
            "dp_sgd_accountant": dp.accountant,
            "dp_sgd_secure_rng": dp.secure_rng,
            "dp_sgd_rounds": self.num_rounds,
        }

    # ---- (de)serialisation --------------------------------------------------------------------
    def dp_check(self) -> DPRunCheck:
        """The dp settings checked against the run (raises ValueError); sample rate, warnings."""
        return check_dp_run(
            self.dp,
            clients_per_round=self.sampled_per_round,
            min_clients=self.min_clients,
            num_clients=self.num_clients,
            norm=self.resolved_norm,
            agc_clip=self.agc_clip,
            proximal_mu=self.proximal_mu,
        )

    def to_flat(self) -> dict[str, Scalar]:
        """Scalars only (unset optional keys left out, ``dp.*`` flattened): what overrides and
        Flower's run config carry."""
        top = {k: v for k, v in self.model_dump(exclude={"dp"}).items() if v is not None}
        return {**top, **self.dp.to_flat()}

    def to_toml(self) -> str:
        """The resolved config as a recipe (the dp settings as a ``[dp]`` table)."""
        top = {k: v for k, v in self.model_dump(exclude={"dp"}).items() if v is not None}
        return tomli_w.dumps({**top, "dp": self.dp.model_dump()})

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with some keys changed (``None``: back to the key's default)."""
        return make_config(without_unset({**self.to_flat(), **changes}))


def _choice(value: str, key: str, choices: Any) -> str:
    """``value`` if it names one of ``choices`` (a registry), else an error listing them."""
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; choose one of {sorted(choices)}")
    return value


def _format_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            if item["loc"][:1] == ("dp",):
                valid = ", ".join(f"{DP_PREFIX}{k}" for k in DPConfig.model_fields)
            else:
                valid = ", ".join(k for k in RunConfig.model_fields if k != "dp") + ", dp.*"
            parts.append(f"unknown config key {key!r} (valid keys: {valid})")
        else:
            msg = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"{key}: {msg}" if key != "config" else msg)
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
RESUMABLE_KEYS = frozenset(
    {
        "num_rounds",  # upwards from the checkpoint's round (checked against the checkpoint)
        "eval_every",
        "fraction_evaluate",
        "checkpoint_every",
        "min_clients",
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


def resume_conflicts(stored: RunConfig, new: RunConfig) -> list[str]:
    """``key=old→new`` for each key whose change a resumed run cannot honour (empty: none)."""
    before, after = stored.to_flat(), new.to_flat()
    before["norm"], after["norm"] = stored.resolved_norm, new.resolved_norm
    return [
        f"{key}={before.get(key)!r}→{after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if key not in RESUMABLE_KEYS and before.get(key) != after.get(key)
    ]
