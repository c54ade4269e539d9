"""Training recipes for the shipped checkpoints: ``python -m pretrained.train {digits,features}``."""
