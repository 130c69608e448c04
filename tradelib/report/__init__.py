"""The report of a run: metrics of the predictions, figures, tables."""
