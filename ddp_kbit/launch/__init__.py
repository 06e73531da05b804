"""Launching the ranks: the Spark session, TorchDistributor, restarts, the run report."""
