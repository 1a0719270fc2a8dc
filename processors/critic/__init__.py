"""The critic: reads the ``traces`` stream and emits ``Diagnosis`` records (ADR 0031).

Pure core (no I/O; import-linter keeps it so): :mod:`.view` (the slice of a trace the detectors
read), :mod:`.config` (every tuning knob, with the reasons), :mod:`.detectors` (ADWIN drifts,
HalfSpaceTrees anomalies, error classes, repeated inputs), :mod:`.runs` (run-level findings:
bottleneck, cost per run, independent steps run in sequence), :mod:`.episodes` (one diagnosis
per drift episode) and :mod:`.critic` (routes traces to the detectors of their subjects).
Edges: :mod:`.runtime` (``CriticProcessor``: the confluent-kafka loop of :mod:`.kafka_loop` by
default, or the faust-streaming app), :mod:`.definitions` (workflow definitions from the read
model) and :mod:`.cli` (``reflux critic``).
"""
