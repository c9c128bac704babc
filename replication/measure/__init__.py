"""Measurements on a saved run: sharpness (Metric 2.1), the gradient noise scale, the Hessian
measures, the parametric plots' curves, the iterates' sharpness and the cross-backend evaluation.
Each reads a run directory and writes its result files into it; none reads a results folder."""
