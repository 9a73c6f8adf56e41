"""The claims the paper makes beyond its tables, measured: Theorem 1 and the collapse
of Figures 2 and 18 (figure_claims, collapse), appendix F (disentanglement, appendix_f) and
appendix K (projection, appendix_k).

Imports only the top-level modules, models, data, engine, evaluation and jobs."""
