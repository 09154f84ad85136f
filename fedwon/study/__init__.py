"""``fedwon study``: the FedWon paper's comparisons, reproduced with one command.

Parts (:mod:`fedwon.study.plan`): the cross-silo table (FedAvg with BN, GN, LN and WS+GN, FedBN,
FedWon; three seeds), cross-device at batch size 1, label skew and domain generalization. Each
method's learning rate (and FedWon's AGC clip) is chosen on validation data
(:mod:`fedwon.study.offline_eval`); every run is a cached, resumable run directory
(:mod:`fedwon.study.runs`); :mod:`fedwon.study.runner` conducts the study and
:mod:`fedwon.study.report` writes ``results.json``, ``results.md`` and plots, with the claims
checked by a stated rule (:mod:`fedwon.study.claims`).

::

    from fedwon.study import QUICK, run_study, write_report
    results = run_study(QUICK, "runs/study-quick", command="python example.py")
    write_report(results, "runs/study-quick/report")
"""

from fedwon.study.plan import FULL, METHODS, PLANS, QUICK, StudyPlan
from fedwon.study.report import results_json, write_report
from fedwon.study.runner import StudyResults, run_study

__all__ = [
    "FULL",
    "METHODS",
    "PLANS",
    "QUICK",
    "StudyPlan",
    "StudyResults",
    "results_json",
    "run_study",
    "write_report",
]
