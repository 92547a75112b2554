"""Scaling analysis: the results table, scaling-law fits with uncertainty, extrapolation, report."""
