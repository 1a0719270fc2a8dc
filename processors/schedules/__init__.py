"""Schedules (ADR 0056): cron expressions in a time zone that start runs of a workflow.

Pure core: :mod:`.cron` (the slots of an expression), :mod:`.plan` (which slots are due now,
given the last one handled: catch-up, jitter, end dates, overlap), :mod:`.firing` (the records a
fire writes). Edges: :mod:`.runtime` (the schedule processor on Kafka) and :mod:`.view` (the
schedules topic read as a table).
"""
