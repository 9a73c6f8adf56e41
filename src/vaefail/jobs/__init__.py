"""The training jobs of the workflow: the job skeleton and the unsupervised job
(training_job), the semi-supervised M2 jobs (semisupervised) and the ground-truth encoders
phi_GT (gt_encoders).

Imports only the top-level modules, models, data, engine and evaluation.
"""
