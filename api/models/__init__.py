"""Request and response models, one module per resource.

They are the API's contract: read-model rows (:mod:`projections.postgres.queries`) and Kafka
records are mapped into them explicitly, so a column or field added there never leaks out.
"""
