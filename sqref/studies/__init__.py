"""The studies behind docs/results.md: each returns a markdown section (`sqref study NAME`)."""
from sqref.studies.tables import STUDIES

__all__ = ["STUDIES"]
