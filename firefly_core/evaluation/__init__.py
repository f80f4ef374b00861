"""Measuring models: C-Eval / CMMLU / own multiple-choice exams scored as lm-evaluation-harness
scores them (`benchmarks`, `runner`, `report`), and side-by-side comparison of replies (`compare`).

Modules: `subjects` (the benchmarks' subjects and categories, as data), `benchmarks` (reading the
exam files, building the harness's prompts), `runner` (tokenizing as the harness, scoring through
the decode seam, the protocol), `report` (accuracy, categories, standard error, table, JSON),
`compare` (replies side by side, their checks, next-token agreement, perplexity).
"""
