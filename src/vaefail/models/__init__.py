"""The models: the VAE and its bounds (vae), the semi-supervised M2 model (m2), and the
ensembles of networks in one flat tensor with their optimiser (nets).

The lowest layer above the package's top-level modules: nothing here imports from data,
engine, evaluation, jobs, analyses or report.
"""
