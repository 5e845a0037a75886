"""The relations job on the producer side: registering and enqueueing a run, its report, its sample."""
