"""Server-side aggregation strategies and their client-side parts (FedCurv's penalty).

``bastion.algorithms.registry`` maps the names used in ``plan.yaml`` to them.
"""
