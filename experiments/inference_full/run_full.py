"""Run the full-size inference study (issue 22's sizes) and write its tables here.

    nice -n 10 python experiments/inference_full/run_full.py [PART ...]

Each part (coverage, map, laws) writes its tables as soon as it finishes, so a partial run
keeps what it computed; ``rdpo inference --full --out DIR`` runs the same study and also
draws the figures.
"""

import sys
import time
from pathlib import Path

from rdpo_theory.figures import write_tables
from rdpo_theory.studies import inference as S

out = Path(__file__).parent
parts = tuple(sys.argv[1:]) or ("coverage", "map", "laws")
for part in parts:
    t0, c0 = time.perf_counter(), time.process_time()
    res = S.run_study(S.full_config(parts=(part,)), progress=True)
    write_tables(res.tables, out)
    print(
        f"{part}: wall {time.perf_counter() - t0:.0f}s, cpu {time.process_time() - c0:.0f}s",
        flush=True,
    )
