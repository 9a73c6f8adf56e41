"""Evaluation of trained members: the per-member metrics (evaluate), the smooth kNN statistic
(smooth_knn) and KSG mutual information (ksg) for all members at once, on one exact neighbour
search (neighbours), and exact posteriors on grids (posteriors).

Imports only the top-level modules, models, data and engine.
"""
