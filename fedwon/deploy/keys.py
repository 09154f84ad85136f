"""SuperNode authentication keys: one ECDSA P-384 key pair per node, in OpenSSH format.

With ``--enable-supernode-auth`` the SuperLink accepts only SuperNodes whose public key was
registered (``flwr supernode register node-0.pub``); each SuperNode signs its requests with the
private key (``--auth-supernode-private-key node-0``). Flower wants an elliptic-curve key on a
NIST curve in OpenSSH encoding, what ``ssh-keygen -t ecdsa -b 384`` writes; ``cryptography``
writes the same files, so no OpenSSH installation is needed. The private key never leaves its
client machine; only the ``.pub`` file goes to whoever registers nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedwon.deploy.errors import DeployError
from fedwon.deploy.files import refuse_existing, write_private

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's key pair."""

    name: str  # also the name it is registered under
    private_key: Path  # stays on the client machine
    public_key: Path  # registered on the SuperLink

    @classmethod
    def in_directory(cls, directory: Path, name: str) -> NodeKey:
        return cls(name, directory / name, directory / f"{name}.pub")


def node_names(count: int, prefix: str = "node") -> list[str]:
    """``node-0 … node-{count-1}``: node i is the SuperNode given ``partition-id=i``."""
    if count < 1:
        raise DeployError(f"--nodes must be >= 1, got {count}")
    return [f"{prefix}-{i}" for i in range(count)]


def make_node_key(directory: str | Path, name: str) -> NodeKey:
    """Write ``<name>`` (private, 0600) and ``<name>.pub`` into ``directory``."""
    if not NODE_NAME.fullmatch(name):
        raise DeployError(
            f"invalid node name {name!r}: use letters, digits, '-', '_' or '.' (at most 63)"
        )
    files = NodeKey.in_directory(Path(directory), name)
    refuse_existing([files.private_key, files.public_key])
    files.private_key.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(files.private_key, private)
    files.public_key.write_bytes(public + f" {name}\n".encode())
    return files


def make_node_keys(directory: str | Path, count: int, prefix: str = "node") -> list[NodeKey]:
    """Key pairs for ``count`` SuperNodes named ``<prefix>-<i>``."""
    names = node_names(count, prefix)
    pairs = [NodeKey.in_directory(Path(directory), n) for n in names]
    refuse_existing(p for pair in pairs for p in (pair.private_key, pair.public_key))
    return [make_node_key(directory, name) for name in names]
