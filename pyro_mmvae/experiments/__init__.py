"""Experiment set-ups used by the command line: data, networks, evaluation and figures per dataset."""
