"""The scheduler's edge: Kafka transactions, recovery, trace output, the workflow view and CLI.

The pure core (``decide``, ``evolve``, ``state``, ``timers``, ``backoff``, ``cache``) sits one level
up and never imports this package.
"""
