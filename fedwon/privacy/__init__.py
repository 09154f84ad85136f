"""Differential privacy for federated training: the stages of a DP round, one module each.

* :mod:`~fedwon.privacy.clipping` -- bound each client's update: ``clip_update`` (flat or per
  layer, uniform or by-size split), ``layer_bounds``;
* :mod:`~fedwon.privacy.noise` -- the Gaussian mechanism on the sum (seeded or OS-secure);
* :mod:`~fedwon.privacy.accounting` -- ``compute_epsilon``, ``calibrate_noise``,
  ``PrivacyLedger`` (Opacus' RDP / PRV accountants, amplification by sampling);
* :mod:`~fedwon.privacy.central_dp` -- ``CentralDP``, user-level DP around any Flower strategy;
* :mod:`~fedwon.privacy.mechanisms` -- the user-level mechanisms it runs, one interface
  (``gaussian``, ``adaptive_clipping``, ``bandmf``); :mod:`~fedwon.privacy.bandmf` -- DP-FTRL's
  banded matrix factorization, correlated noise and participation accounting;
* :mod:`~fedwon.privacy.client_clipping` -- ``dp_clipping_mod``, clipping on the client;
* ``FedLAMB`` (layer-wise gradient normalization on the server) lives with the aggregators,
  :mod:`fedwon.strategies.lamb`; re-exported here;
* :mod:`~fedwon.privacy.assembly` -- ``PrivacyWrap``: the DP wrapper a run's dp section asks for;
* :mod:`~fedwon.privacy.dp_sgd` -- sample-level DP-SGD on a client (Opacus);
* :mod:`~fedwon.privacy.client_epsilons` -- ``ClientEpsilons``, sample-level DP's server side
  (each client's epsilon; a round reports the maximum);
* :mod:`~fedwon.privacy.config` -- ``DPConfig`` (the ``dp.*`` keys) and ``check_dp_run``.
"""

from typing import TYPE_CHECKING, Any

from fedwon.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyLedger,
    calibrate_noise,
    compute_epsilon,
    history_epsilon,
    sample_rate,
)
from fedwon.privacy.central_dp import BudgetExhaustedError, CentralDP, ClientClippingError
from fedwon.privacy.client_clipping import dp_clipping_mod
from fedwon.privacy.client_epsilons import ClientEpsilons, MissingEpsilonError
from fedwon.privacy.clipping import CLIP_MODES, SPLITS, clip_update, layer_bounds, update_norms
from fedwon.privacy.config import DPConfig, DPRunCheck, check_dp_run
from fedwon.privacy.noise import noise_std
from fedwon.strategies.lamb import FedLAMB

if TYPE_CHECKING:
    from fedwon.privacy.dp_sgd import (
        PrivateTraining,
        calibrate_sample_noise,
        check_dp_sgd_model,
        dp_sgd_noise_multiplier,
        private_training,
    )

_LAZY = (
    "PrivateTraining",
    "calibrate_sample_noise",
    "check_dp_sgd_model",
    "dp_sgd_noise_multiplier",
    "private_training",
)


def __getattr__(name: str) -> Any:
    """DP-SGD names load Opacus (seconds), so they are imported on first use only."""
    if name in _LAZY:
        from fedwon.privacy import dp_sgd

        return getattr(dp_sgd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCOUNTANTS",
    "CLIP_MODES",
    "SPLITS",
    "BudgetExhaustedError",
    "CentralDP",
    "ClientClippingError",
    "ClientEpsilons",
    "DPConfig",
    "DPRunCheck",
    "FedLAMB",
    "MissingEpsilonError",
    "PrivacyLedger",
    "PrivateTraining",
    "calibrate_noise",
    "calibrate_sample_noise",
    "check_dp_run",
    "check_dp_sgd_model",
    "clip_update",
    "compute_epsilon",
    "dp_clipping_mod",
    "dp_sgd_noise_multiplier",
    "history_epsilon",
    "layer_bounds",
    "noise_std",
    "private_training",
    "sample_rate",
    "update_norms",
]
