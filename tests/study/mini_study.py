"""A miniature study plan: every kind of part, a dozen one-round runs of a tiny model."""

from __future__ import annotations

from fedwon.study.plan import Part, StudyPlan

TINY = {"model": "cnn-tiny", "train_per_domain": 20, "test_per_domain": 10, "num_rounds": 1}
TWO = {**TINY, "domains": "mnist,usps", "checkpoint_every": 0}

MINI = StudyPlan(
    name="mini",
    parts=(
        Part(
            name="cross_silo",
            title="mini cross-silo",
            recipe="cross_silo.toml",
            settings={**TWO, "num_clients": 2},
            methods=("fedbn", "fedwon"),
            seeds=(1, 2),
            lrs=(0.01, 0.05),
            fedwon_lrs=(0.05,),
            agc_clips=(0.32,),
        ),
        Part(
            name="cross_device",
            title="mini cross-device",
            recipe="cross_device.toml",
            settings={**TWO, "num_clients": 4, "clients_per_round": 2, "eval_every": 1},
            methods=("fedwon",),
            seeds=(1,),
            fedwon_lrs=(0.01,),
            agc_clips=(0.32,),
            refused=("fedavg",),
        ),
        Part(
            name="domain_generalization",
            title="mini domain generalization",
            recipe="cross_silo.toml",
            settings={
                **TINY,
                "domains": "mnist,usps,svhn",
                "num_clients": 3,
                "checkpoint_every": 0,
            },
            methods=("fedbn",),
            seeds=(1,),
            reuse="cross_silo",
            heldout=True,
        ),
    ),
)
