"""Network definitions used by the training stages."""
