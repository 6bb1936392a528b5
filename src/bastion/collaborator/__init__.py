"""collaborator."""
