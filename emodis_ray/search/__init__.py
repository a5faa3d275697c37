"""Hyperparameter search with Ray Tune + Optuna: spaces, the selection rule, the trial, the driver, the outputs."""
