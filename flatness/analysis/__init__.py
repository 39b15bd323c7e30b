"""Across runs: from the metrics the evaluators wrote to correlations, effects and reports.

  correlation    `gather` runs' rows, `correlate` flatness with accuracy, paired effects,
                 seed summaries, `spearman` / `partial_spearman`
  report         CSV / Markdown tables, the report, figures
  drift          drift rates of tr(H), the eta^2 t / B collapse, the rate law
  drift_report   the mechanism experiment's report; drift_figures: its figures

Imports: `flatness.runtime` (metric files) only; no model code, no JAX.
"""
