"""Evaluation of trained members: the per-member metrics (evaluate), the smooth kNN statistic
and KSG mutual information for all members at once (batched_metrics) and exact posteriors on
grids (posteriors).

Imports only the top-level modules, models, data and engine.
"""
