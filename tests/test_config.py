"""RunConfig: recipes, overrides, validation messages."""

from pathlib import Path

import pytest

from fedwon.config import ConfigError, load_config, make_config, parse_override

SIMS = Path(__file__).resolve().parent.parent / "sims"


@pytest.mark.parametrize("recipe", sorted(SIMS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe: Path) -> None:
    cfg = load_config(recipe)
    assert cfg.server.num_rounds >= 1


def test_overrides_are_typed_and_applied_over_the_recipe() -> None:
    cfg = load_config(SIMS / "cross_silo.toml", ["strategy=fedbn", "lr=0.1", "num_rounds=3"])
    assert (cfg.server.strategy, cfg.train.lr, cfg.server.num_rounds) == ("fedbn", 0.1, 3)
    assert cfg.resolved_norm == "bn"


def test_norm_follows_the_strategy_unless_set() -> None:
    assert make_config({"strategy": "fedwon"}).resolved_norm == "ws"
    assert make_config({"strategy": "fedavg"}).resolved_norm == "bn"
    assert make_config({"strategy": "fedavg", "norm": "gn"}).resolved_norm == "gn"


def test_unknown_key_is_refused_with_the_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'.*valid keys: .*\blr\b"):
        make_config({"lrr": 0.1})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"strategy": "fedswap"},
            r"strategy: unknown strategy 'fedswap'; choose one of \['fedavg', 'fedbn', 'fedwon'\]",
        ),
        ({"model": "vgg"}, r"model: unknown model 'vgg'; choose one of \[.*'cnn'"),
        ({"norm": "batch"}, r"norm: unknown norm 'batch'"),
        ({"dataset": "mnist"}, r"unknown dataset 'mnist'; choose one of"),
        ({"lr": 0}, r"lr: must be > 0"),
        ({"fraction_train": 1.5}, r"fraction_train: must be in \(0, 1\]"),
        ({"num_clients": 5, "clients_per_round": 6}, r"clients_per_round=6 exceeds"),
        ({"strategy": "fedwon", "norm": "bn"}, r"fedwon' trains a normalization-free model"),
        ({"strategy": "fedbn", "norm": "ws"}, r"fedbn' keeps normalization layers local"),
        ({"batch_size": 1, "strategy": "fedavg"}, r"batch_size=1 cannot train with norm='bn'"),
        ({"num_rounds": "ten"}, r"num_rounds: expected an integer, got a string 'ten'"),
        # strict types: what pydantic's lax mode would have coerced silently
        ({"num_rounds": "1"}, r"num_rounds: expected an integer, got a string '1'"),
        ({"num_rounds": True}, r"num_rounds: expected an integer, got a boolean True"),
        ({"num_clients": 5.0}, r"num_clients: expected an integer, got a float 5\.0"),
        ({"lr": "0.1"}, r"lr: expected a number, got a string '0\.1'"),
        ({"lr": True}, r"lr: expected a number, got a boolean True"),
        ({"lr": float("nan")}, r"lr: expected a finite number, got nan"),
        ({"lr": float("inf")}, r"lr: expected a finite number, got inf"),
        ({"momentum": -float("inf")}, r"momentum: expected a finite number, got -inf"),
        # bounds
        ({"checkpoint_every": -3}, r"checkpoint_every: must be >= 0, got -3"),
        ({"num_workers": -7}, r"num_workers: must be -1 \(auto\), 0 \(in-process\)"),
        ({"seed": -1}, r"seed: must be >= 0, got -1"),
        ({"ray_address": "head"}, r"ray_address: 'head' is not a Ray address; use 'auto'"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(values)


def test_integers_are_numbers_and_all_lists_of_several_errors_are_named() -> None:
    assert make_config({"lr": 1}).train.lr == 1.0  # an integer is a valid number
    for address in ("auto", "10.0.0.1:6379", "ray://head.example:10001"):
        assert make_config({"ray_address": address}).engine.ray_address == address
    with pytest.raises(ConfigError, match=r"num_rounds: expected an integer.*; lr: expected a fin"):
        make_config({"num_rounds": "3", "lr": float("nan")})


def test_list_values_on_the_command_line_mean_what_they_mean_in_a_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('domains = ["mnist", "usps"]\nnum_clients = 2\n')
    from_recipe = load_config(recipe)
    assert from_recipe.data.domains == ("mnist", "usps")
    for override in ("domains=[mnist,usps]", 'domains=["mnist", "usps"]', "domains=[mnist, usps]"):
        assert load_config(None, [override, "num_clients=2"]) == from_recipe, override


def test_override_parsing() -> None:
    assert parse_override("lr=0.5") == ("lr", 0.5)
    assert parse_override("strategy=fedbn") == ("strategy", "fedbn")
    assert parse_override('domains="mnist,usps"') == ("domains", "mnist,usps")
    assert parse_override("dp.enabled=true") == ("dp.enabled", True)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")


def test_missing_and_broken_recipes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("strategy = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_flat_round_trip() -> None:
    cfg = make_config({"strategy": "fedbn", "domains": "mnist,svhn", "lr": 0.02})
    assert make_config(cfg.to_flat()) == cfg
    assert cfg.data.domains == ("mnist", "svhn")


def test_val_fraction_defaults_to_a_tenth_and_reaches_the_data_spec() -> None:
    assert make_config({}).data.val_fraction == 0.1
    assert make_config({"val_fraction": 0.2}).client_config().data.val_fraction == 0.2
    no_split = make_config({"val_fraction": 0.0}).client_config()
    assert no_split.data.val_fraction == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"val_fraction must be a number in \[0, 1\)"):
            make_config({"val_fraction": bad})
