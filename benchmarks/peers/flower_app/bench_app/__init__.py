"""The round-overhead workload as a Flower app."""
