"""A miniature study plan: every kind of part, halving over two rungs of one round each, FedWon
with two AGC arms, a couple of dozen runs of a tiny model."""

from __future__ import annotations

from fedwon.study.halving import Ladder
from fedwon.study.part import Part, StudyPlan

TINY = {"model": "cnn-tiny", "train_per_domain": 20, "test_per_domain": 10, "num_rounds": 2}
TWO = {**TINY, "domains": "mnist,usps", "checkpoint_every": 0}
FIXED = {  # grids that cannot widen: the ladders hold just the grid
    "lr_ladder": Ladder((0.03, 0.1)),
    "clip_ladder": Ladder((0.32,)),
    "agc_clips": (0.32,),
    "rung0": 1,
}

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
            lrs=(0.03, 0.1),
            fedwon_lrs=(0.03, 0.1),
            agc_arms=("all_but_head", "off"),
            **FIXED,  # type: ignore[arg-type]
        ),
        Part(
            name="cross_device",
            title="mini cross-device",
            recipe="cross_device.toml",
            settings={**TWO, "num_clients": 4, "clients_per_round": 2, "eval_every": 1},
            methods=("fedwon",),
            seeds=(1,),
            fedwon_lrs=(0.03,),
            agc_arms=("nfnets",),
            refused=("fedavg",),
            **{**FIXED, "lr_ladder": Ladder((0.03,))},  # type: ignore[arg-type]
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
