"""The shared core: params, atomic IO, MLflow tracking, devices, data-parallel helpers, images,
the manifest schema, plots and pretrained weights. Every domain package builds on it; it imports none of them.
"""
