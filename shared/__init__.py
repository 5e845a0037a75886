"""What the producer and the workers both use: records, keys, stores, prompts."""
