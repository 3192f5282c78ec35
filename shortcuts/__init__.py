"""Shortcut checks: the crop-feature audit and the counterfactual probes (is the model right for
the wrong reason?).
"""
