"""Privacy mechanisms: secure aggregation (``secagg``) and differential privacy (``dp``)."""
