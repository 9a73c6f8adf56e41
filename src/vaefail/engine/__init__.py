"""The batched training engine: the trainer and its task protocol (train), M2's task
(m2_task), building, saving and loading ensembles (ensembles), one sampler per model kind
(sampling).

Imports only the top-level modules, models and data."""
