"""Evaluation of trained classifiers: metrics, grouped bootstrap CIs and paired tests."""
