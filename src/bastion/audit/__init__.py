"""A signed, hash-chained, append-only audit log of a federation that any party can verify."""
