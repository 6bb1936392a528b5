"""The federation service's director: registry of sites, job queue, each job's aggregator."""
