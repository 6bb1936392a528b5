"""A data site's long-lived agent: registers, decides under its policy, runs accepted jobs."""
