"""Helpers shared by Bastion's tests."""
