"""Evaluation of trained runs: batch inference, probes, statistics, the records, evaluate, predict and the
report."""
