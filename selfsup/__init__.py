"""Self-supervised pretraining (SimCLR) of the classifier's backbone on unlabelled face crops."""
