"""Studies: functions returning tidy pandas tables (one row per run), drawn by ``plots``.

``studies.sweep`` is the shared parallel, cached, resumable sweep runner.
"""
