"""The report: MLflow runs grouped into iterations, setup facts, a small document model, figures,
HTML and Markdown.
"""
