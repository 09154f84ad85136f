"""Methods decide what is shared; the server app starts from exactly the shared arrays."""

import pytest

from fedwon.config import make_config
from fedwon.models import build_model
from fedwon.server_app import initial_arrays
from fedwon.strategies import METHODS, norm_state_keys


def test_fedbn_initial_arrays_carry_no_normalization_tensors() -> None:
    model = build_model("cnn-tiny", norm="bn")
    local = set(norm_state_keys(model))
    shared = set(initial_arrays(make_config({"strategy": "fedbn", "model": "cnn-tiny"})).keys())
    assert local and shared and not shared & local
    assert shared | local == set(model.state_dict())
    everything = initial_arrays(make_config({"strategy": "fedavg", "model": "cnn-tiny"}))
    assert set(everything.keys()) == set(model.state_dict())


def test_fedbn_keeps_gn_layers_local_too_and_refuses_a_model_without_norm() -> None:
    gn = build_model("cnn-tiny", norm="gn")
    shared = set(METHODS["fedbn"].shared_arrays(gn).keys())
    assert shared == set(gn.state_dict()) - set(norm_state_keys(gn))
    with pytest.raises(ValueError, match=r"FedBN keeps normalization layers local.*none"):
        METHODS["fedbn"].shared_arrays(build_model("cnn-tiny", norm="ws"))


def test_fedwon_shares_everything_of_a_normalization_free_model_only() -> None:
    ws = build_model("cnn-tiny", norm="ws")
    assert set(METHODS["fedwon"].shared_arrays(ws).keys()) == set(ws.state_dict())
    with pytest.raises(ValueError, match=r"normalization-free.*norm='ws'"):
        METHODS["fedwon"].shared_arrays(build_model("cnn-tiny", norm="bn"))


def test_server_builds_initial_arrays_without_loading_data(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedwon.datasets.federation as federation

    def refuse(*args: object) -> None:
        raise AssertionError("the server loaded client data")

    monkeypatch.setattr(federation, "load_domain_arrays", refuse)
    monkeypatch.setattr(federation, "build_federation", refuse)
    arrays = initial_arrays(make_config({"strategy": "fedwon", "model": "cnn-tiny"}))
    assert len(arrays) > 0
