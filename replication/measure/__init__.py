"""Measurements on a saved run: sharpness (Metric 2.1), the gradient noise scale, the Hessian
measures, the parametric plots' curves, the iterates' sharpness and the cross-backend evaluation.
Each reads a run directory and writes its result files into it (the parametric plots: a trial's
SB/LB pair, into the trial's landscape/ folder); none reads a results folder. registry.py lists the
per-run measures once, for make's rules and the results loader."""
