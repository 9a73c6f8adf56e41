"""The claims the paper makes beyond its tables, measured: numbers only (data frames), no
drawing and no table writing (report does both).  Theorem 1 and the collapse of Figures 2
and 18 (figure_claims, collapse); appendix F (disentanglement: the linear-Gaussian model in
closed form and the MIG; appendix_f: its table's numbers); appendix K (projection: projections,
denoising and attacks; appendix_k_geometry: the plane of the 5-D data and the classifier;
appendix_k_projections: the projections compared; appendix_k: the denoising and attack
tables); and the selected models that the analyses and the figures read (selected).

Imports only the top-level modules, models, data, engine, evaluation and jobs.
"""
