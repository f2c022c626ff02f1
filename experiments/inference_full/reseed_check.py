"""Re-draw the n = 1e5 DPO coverage with two other base seeds (1000 replications each), to
tell a sampling fluctuation of the main run (where the five regimes share their samples) from
a real undercoverage. Writes inference_reseed_check.csv here.

    python experiments/inference_full/reseed_check.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

from rdpo_theory.figures import write_tables
from rdpo_theory.inference import confidence
from rdpo_theory.studies import inference as S

world = S.inference_world(0)
target = S._population(world, "dpo", 0.0).theta
n, reps = 100_000, 1000
rows = []
for base in (1, 2):
    cov = []
    for r in range(reps):
        data = world.empirical(n, seed=(base, 1, n, r))
        c = confidence(data, method="dpo", beta=world.beta, n_samples=n, radius=world.B)
        cov.append((c.ci[:, 0] <= target) & (target <= c.ci[:, 1]))
    for j, p in enumerate(np.mean(cov, axis=0)):
        se = float(np.sqrt(p * (1 - p) / reps))
        rows.append(
            {
                "base_seed": base,
                "n": n,
                "regime": "dpo 0",
                "quantity": f"theta{j}",
                "reps": reps,
                "coverage": float(p),
                "binom_se": se,
            }
        )
write_tables({"inference_reseed_check": pd.DataFrame(rows)}, Path(__file__).parent)
