"""Turns records on ``reflux.triggers`` (webhooks, external systems) into ``StartRun`` commands."""
