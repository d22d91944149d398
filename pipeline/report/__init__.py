"""The run report (`stages/report.py` runs `write.write_report`): facts read from a run's files,
plots, and the Markdown that ties them together."""
