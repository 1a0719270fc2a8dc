"""One router per resource; :func:`api.app.create_app` assembles them under ``/v1``."""
