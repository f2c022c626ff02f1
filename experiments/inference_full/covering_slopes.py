"""Slopes of the covering-constant map without n = 500, where those radii still collapse the
estimate to theta_ref (covering/inference_map_slopes_n2000.csv).

    python experiments/inference_full/covering_slopes.py
"""

from pathlib import Path

import pandas as pd

from rdpo_theory.figures import write_tables
from rdpo_theory.studies import inference as S

here = Path(__file__).parent / "covering"
runs = pd.read_csv(here / "inference_map_runs.csv")
sl, _ = S.map_summary(runs, n_boot=1000, seed=0, min_n=2000)
write_tables({"inference_map_slopes_n2000": sl}, here)
