"""From results to the report: selection of restarts and settings (selection), the paper's
tables and the package's one LaTeX table writer (tables), the tables of the analyses
(analysis_tables), the paper's values (paper_values) and our cells on each scale of the kNN
statistic beside them (paper_scale), the claims and their statistics (claims, evidence), the
figures (figures/), the run record (record) and the reproduction report (document).

The top layer of the science: may import from every subpackage; nothing imports from it but
the entry points (vaefail.__main__, vaefail.bench).
"""
