"""Uncertainty of the classifier: ensembles and MC dropout, conformal prediction sets, selective prediction."""
