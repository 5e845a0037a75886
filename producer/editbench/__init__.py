"""The editbench job on the producer side: registering a run, the phases that drive it, its report
and comparisons, its sample and the check of a benchmark file."""
