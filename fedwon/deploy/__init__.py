"""Real deployments: a SuperLink and SuperNodes over gRPC (``fedwon deploy local|certs|keys``).

- :mod:`~fedwon.deploy.certs` / :mod:`~fedwon.deploy.keys`: TLS material and SuperNode keys;
- :mod:`~fedwon.deploy.commands`: the pinned Flower command lines and the files they read;
- :mod:`~fedwon.deploy.plan`: a run sized to N nodes, and each node's config;
- :mod:`~fedwon.deploy.processes` / :mod:`~fedwon.deploy.network`: starting and stopping processes
  without orphans, free ports;
- :mod:`~fedwon.deploy.diagnose`: failures as one-line explanations;
- :mod:`~fedwon.deploy.supernode` / :mod:`~fedwon.deploy.worker`: what a client machine runs, a
  SuperNode with a shorter poll and a warm ClientApp worker that runs all its messages;
- :mod:`~fedwon.deploy.local`: all of it on one machine. See docs/deployment.md.
"""

from fedwon.deploy.certs import Certificates, make_certificates
from fedwon.deploy.errors import DeployError
from fedwon.deploy.keys import NodeKey, make_node_keys
from fedwon.deploy.local import LocalFederation, LocalResult, deploy_local

__all__ = [
    "Certificates",
    "DeployError",
    "LocalFederation",
    "LocalResult",
    "NodeKey",
    "deploy_local",
    "make_certificates",
    "make_node_keys",
]
