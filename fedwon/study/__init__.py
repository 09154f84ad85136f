"""``fedwon study``: the FedWon paper's comparisons, reproduced with one command.

Parts (:mod:`fedwon.study.plan`): cross-device at batch size 1 and 2, label skew with and
without feature shift, the cross-silo table (FedAvg with BN, GN, LN and WS+GN, FedBN, FedWon)
and domain generalization, each on three reported seeds. Each method's learning rate (and
FedWon's AGC clip, for each AGC rule of its ablation) is chosen on validation data
(:mod:`fedwon.study.offline_eval`) by successive halving over a self-widening grid
(:mod:`fedwon.study.halving`); every run is a cached, resumable run directory that leaves a small
committed record (:mod:`fedwon.study.runs`, :mod:`fedwon.study.records`);
:mod:`fedwon.study.runner` conducts the study and :mod:`fedwon.study.report` writes
``results.json``, ``results.md`` and plots from the records, with the claims checked by a stated
rule (:mod:`fedwon.study.claims`). What a plan costs: :mod:`fedwon.study.budget`.

::

    from fedwon.study import QUICK, run_study, write_report
    results = run_study(QUICK, "runs/study-quick", records="runs/study-quick/records",
                        command="python example.py")
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
