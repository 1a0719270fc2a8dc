"""Code that runs inside the sandbox, not in the worker: the ``reflux_node`` package (stdlib only;
the sandbox's interpreter is the host's /usr python, with no virtualenv)."""
