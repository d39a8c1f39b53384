"""Shared test configuration: hypothesis profiles.

Profiles:
  dev  small and fast, random (the default on a workstation)
  ci   larger and derandomised, so a CI failure reproduces (the default when CI is set)
Choose one explicitly with HYPOTHESIS_PROFILE=dev|ci.
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
