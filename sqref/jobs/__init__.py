"""Whole jobs, one per command: each takes plain arguments, does the work and returns a result.

The `sqref` commands (sqref.cli) parse arguments, call one of these and print
or write the result; Python code, notebooks and cluster workers call the
same functions and get the same results.
"""
