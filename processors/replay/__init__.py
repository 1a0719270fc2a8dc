"""Replay: debugging a recorded run and A/B evaluation of candidate changes (issue 10).

Shared by several modules, each with one job: ``shadow`` (the A/B replay engine on isolated
shadow topics and state), ``recorded`` (serving side-effecting nodes from the original runs'
records), ``determinism`` (same version, same events?), ``diff``/``explain``/``bundle``
(debugging) and ``stats``/``report``/``runner`` (the A/B report and job). docs/replay.md.
"""
