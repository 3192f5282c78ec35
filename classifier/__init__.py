"""The real-vs-fake classifier: image cache, augmentations, training loop, inference (apart from
training), metrics and calibration, evaluation, predict, checkpoints.
"""
