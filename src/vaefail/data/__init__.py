"""The data: the paper's synthetic examples (datasets), appendix F's linear-Gaussian truth
(linear_gaussian), the UCI data sets (uci), the ground-truth decoders (surrogate) and the
data-set files that the jobs draw and the training jobs load (dataset_files).

Imports only the top-level modules and models.
"""
