"""Reading results: one loader for a results folder (results.py), the published numbers beside
ours (compare.py), a verdict per claim (verdicts.py), each study's tables and figures, and the
report. Nothing here trains or measures; everything is drawn from the files."""
