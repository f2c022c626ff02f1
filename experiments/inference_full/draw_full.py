"""Draw the full-size figures from the tables in this folder into figures/inference_full_*.png
(docs/inference.md shows them).

    python experiments/inference_full/draw_full.py
"""

from pathlib import Path

import pandas as pd

from rdpo_theory.plots import inference as P

out = Path(__file__).parent
figs = Path(__file__).resolve().parents[2] / "figures"
t = {p.stem: p for p in out.glob("inference_*.csv")}
if "inference_coverage" in t:
    P.coverage_vs_n(pd.read_csv(t["inference_coverage"]), figs / "inference_full_coverage.png")
if "inference_map_slopes" in t:
    P.radius_map(
        pd.read_csv(t["inference_map_slopes"]),
        pd.read_csv(t["inference_map_coverage"]),
        figs / "inference_full_radius_map.png",
    )
if "inference_laws_slopes" in t:
    P.law_slopes(pd.read_csv(t["inference_laws_slopes"]), figs / "inference_full_laws.png")
