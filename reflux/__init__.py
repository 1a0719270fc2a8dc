"""REFLUX: self-improving workflow automation, event-sourced on Apache Kafka."""

__version__ = "0.1.0"
