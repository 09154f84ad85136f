"""Client resources: one GPU per client when GPUs exist, never a GPU that does not."""

import pytest

from fedwon.config import ConfigError, make_config
from fedwon.simulation import client_resources


def test_cpu_only_machine_asks_for_no_gpu() -> None:
    res = client_resources(make_config({}), num_gpus=0, num_cpus=2)
    assert (res.num_gpus, res.num_cpus, res.num_actors) == (0.0, 1.0, 2)


def test_each_client_gets_a_whole_gpu_by_default() -> None:
    res = client_resources(make_config({}), num_gpus=4, num_cpus=16)
    assert (res.num_gpus, res.num_actors) == (1.0, 4)


def test_fractional_gpus_pack_clients() -> None:
    res = client_resources(make_config({"gpus_per_client": 0.25}), num_gpus=2, num_cpus=16)
    assert (res.num_gpus, res.num_actors) == (0.25, 8)


def test_cpus_bound_the_actor_count() -> None:
    res = client_resources(make_config({"gpus_per_client": 0.25}), num_gpus=2, num_cpus=4)
    assert res.num_actors == 4


def test_device_cpu_ignores_gpus_and_cuda_without_gpu_is_refused() -> None:
    assert client_resources(make_config({"device": "cpu"}), num_gpus=8, num_cpus=2).num_gpus == 0
    with pytest.raises(ConfigError, match="no GPU is visible"):
        client_resources(make_config({"device": "cuda"}), num_gpus=0, num_cpus=2)


def test_more_gpus_per_client_than_exist_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"gpus_per_client=2.0 must be in \(0, 1\]"):
        client_resources(make_config({"gpus_per_client": 2}), num_gpus=1, num_cpus=8)


def test_on_a_ray_cluster_the_config_decides_gpus() -> None:
    cfg = make_config({"ray_address": "auto", "device": "cuda", "gpus_per_client": 0.5})
    assert client_resources(cfg).num_gpus == 0.5
    assert client_resources(cfg.replace(device="auto")).num_gpus == 0.0
