"""The plan's section schemas (pydantic), in the base layer so ``bastion.plan`` needs no mechanism.

A schema here imports only base modules; whatever builds mechanism objects from a section
lives in that mechanism's package (e.g. ``bastion.compression.pipeline.build_pipeline``).
"""
