"""Fitting interaction models to the retraining results, scoring them, and the first-order views (TRAK)."""
