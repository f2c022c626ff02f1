"""The radius map at the covering constants measured by the main map: n KL(P0 || P_n) and
sqrt(n) W1(P0, P_n) have 95% quantiles 61.0 and 2.6 at n = 1e5
(inference_map_runs.csv, column distance; chi2_{96, 0.95} / 2 = 59.9 for the 97 oriented
support points), so rho_n = 59.9 / n (KL) and 2.6 / sqrt(n) (W1) cover P0 about 95% of the
time. Writes the map tables under covering/.

    nice -n 10 python experiments/inference_full/covering_check.py
"""

from pathlib import Path

from rdpo_theory.figures import write_tables
from rdpo_theory.studies import inference as S

config = S.full_config(
    parts=("map",), exponents=(0.5, 1.0), map_constants=(("kl", (59.94,)), ("w", (2.6,)))
)
res = S.run_study(config, progress=True)
write_tables(res.tables, Path(__file__).parent / "covering")
