"""Suite-wide settings: one torch thread.

The tests train tiny models, for which a second intra-op thread costs more than it gives
(measured on a loaded 2-core machine: 56 tiny trainings took 22 s with 2 threads, 0.85 s with
one). The engines pin threads per client themselves (node config ``threads``), so this changes
no result, only the time the suite takes.
"""

import torch

torch.set_num_threads(1)
