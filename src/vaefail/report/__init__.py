"""From results to the report: selection of restarts and settings (selection), the tables
(tables), the paper's values (paper_values) and the
comparison of scales (paper_scale), the claims and their statistics (claims, evidence), the
figures (figures/), the run record (record) and the reproduction report (document).

The top layer of the science: may import from every subpackage; nothing imports from it but
the command line (vaefail.__main__)."""
