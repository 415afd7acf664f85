"""Numerical solvers the estimators share (kept apart from the estimators that call them)."""
