"""Worker limits and settings that the command line (defaults) and the benchmarks read without
loading the worker runtime."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_INLINE_OUTPUT_BYTES", "RESULT_LINGER_MS"]

DEFAULT_MAX_INLINE_OUTPUT_BYTES: Final = 256 * 1024
"""Outputs larger than this go to the object store, the result carries a reference."""

RESULT_LINGER_MS: Final = 0
"""The worker producer's ``linger.ms``: a result (and its trace) leaves at once. It was 1 ms
while every attempt sent a start signal, so that signal, result and trace shared one request
(ADR 0021); a fast attempt sends none now (ADR 0013, "the start signal is lazy"). Paired runs
on 2026-12-07 (benchmarks/README.md, "The unloaded remote step by phase"): result hop 2-3 ->
1-2 ms p50, and under load 1.3 instead of 0.7 produce requests per step for no more broker CPU
and less worker CPU (no 1 ms linger timers)."""
