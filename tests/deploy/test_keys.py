"""SuperNode key pairs: OpenSSH format that Flower's own loaders accept, owner-only private keys."""

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key

from fedwon.deploy.errors import DeployError
from fedwon.deploy.keys import make_node_key, make_node_keys


def test_keys_are_p384_openssh_pairs_flower_accepts(tmp_path: Path) -> None:
    pairs = make_node_keys(tmp_path, 2)
    assert [p.name for p in pairs] == ["node-0", "node-1"]
    for pair in pairs:
        private = serialization.load_ssh_private_key(pair.private_key.read_bytes(), None)
        public = serialization.load_ssh_public_key(pair.public_key.read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert pair.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
        assert pair.public_key.read_text().rstrip().endswith(pair.name)
        assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600
        assert try_load_public_key(pair.public_key)  # what `flwr supernode register` runs
    first, second = (p.public_key.read_bytes() for p in pairs)
    assert first != second


def test_existing_keys_are_never_overwritten(tmp_path: Path) -> None:
    make_node_key(tmp_path, "node-1")
    with pytest.raises(DeployError, match=r"node-1.* already exist"):
        make_node_keys(tmp_path, 2)
    assert not (tmp_path / "node-0").exists()  # refused before writing anything


@pytest.mark.parametrize("name", ["", "a b", "../x", "-x"])
def test_bad_node_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(DeployError, match="invalid node name"):
        make_node_key(tmp_path, name)


def test_at_least_one_node(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="--nodes must be >= 1, got 0"):
        make_node_keys(tmp_path, 0)
