"""Studies: a grid of conditions measured honestly (interleaved, with baselines), statistics, plots, report."""
