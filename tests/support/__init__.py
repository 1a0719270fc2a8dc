"""Test-only tools: the scheduler simulation, the golden run-log writer and the one wait
(:func:`tests.support.waiting.eventually`)."""
