"""Evaluation: base-to-novel accuracy of a model, evaluation of a run folder, tables over many runs."""
