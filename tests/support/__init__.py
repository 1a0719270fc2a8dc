"""Test-only tools: the scheduler simulation and the golden run-log writer."""
