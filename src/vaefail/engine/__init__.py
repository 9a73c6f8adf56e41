"""The batched training engine: the trainer and its task protocol (train), M2's task
(m2_task), a bound averaged over points in device-sized chunks (bounds), building, saving and
loading ensembles (ensembles) and one sampler per model kind (sampling).

Imports only the top-level modules, models and data.
"""
