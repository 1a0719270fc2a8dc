"""The floor every package stands on: settings, the error root, the object store.

It imports nothing of the project; everything else may import it.
"""
