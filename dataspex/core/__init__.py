"""What every layer uses: errors, self-describing files, metrics, data loading, models and the demo set."""
