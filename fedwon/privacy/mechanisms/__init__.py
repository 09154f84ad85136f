"""User-level DP mechanisms behind one interface (:class:`UserMechanism`), registered by name.

``dp.mechanism`` picks one of :data:`MECHANISMS`; :class:`~fedwon.privacy.CentralDP` runs it
around any strategy. A new mechanism is one file in this package and one line below (see
:mod:`fedwon.privacy.mechanisms.base`).
"""

from fedwon.privacy.mechanisms.adaptive_clipping import AdaptiveClipping
from fedwon.privacy.mechanisms.bandmf import BandMF
from fedwon.privacy.mechanisms.base import (
    ClipRule,
    DPSettings,
    GaussianSettings,
    MechanismSetting,
    RoundSum,
    UserMechanism,
)
from fedwon.privacy.mechanisms.gaussian import GaussianMechanism

MECHANISMS: dict[str, type[UserMechanism]] = {
    GaussianMechanism.name: GaussianMechanism,
    AdaptiveClipping.name: AdaptiveClipping,
    BandMF.name: BandMF,
}

__all__ = [
    "MECHANISMS",
    "AdaptiveClipping",
    "BandMF",
    "ClipRule",
    "DPSettings",
    "GaussianMechanism",
    "GaussianSettings",
    "MechanismSetting",
    "RoundSum",
    "UserMechanism",
]
