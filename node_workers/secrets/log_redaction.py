"""Masking resolved secret values in every log record the worker process creates.

Nodes and their libraries log on their own (httpx logs request URLs at INFO), under loggers and
handlers REFLUX does not control. A log record factory sees every record once, at creation and
before any handler formats it, so it is where the process's :class:`Redactor` values are removed
(docs/decisions/0009-secrets.md explains why not a handler filter).
"""

from __future__ import annotations

import logging
import threading
import traceback
import weakref
from typing import Any, Final

from node_workers.secrets.redaction import Redactor

__all__ = ["install_log_redaction"]


class _LogHook:
    """The process-wide log record factory and the redactors it applies (weakly held)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()
        self.installed = False

    def install(self, redactor: Redactor) -> None:
        with self.lock:
            self.redactors.add(redactor)
            if self.installed:
                return
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                self.redact(record)
                return record

            logging.setLogRecordFactory(factory)
            self.installed = True

    def redact(self, record: logging.LogRecord) -> None:
        with self.lock:
            redactors = [r for r in self.redactors if len(r)]
        if not redactors:
            return

        def scrub(text: str) -> str:
            for redactor in redactors:
                text = redactor.redact_text(text)
            return text

        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it when a handler formats
            return
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            clean = scrub(text)
            if clean != text:
                # Formatters print exc_text when set; dropping exc_info keeps handlers that
                # format the exception themselves from printing the unredacted one.
                record.exc_text, record.exc_info = clean, None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)


_LOG_HOOK: Final = _LogHook()


def install_log_redaction(redactor: Redactor) -> None:
    """Redact ``redactor``'s values from every log record this process creates from now on.

    A log record factory, not a handler filter: it sees records of every logger (httpx logs
    request URLs at INFO) whatever handlers are attached, before any handler formats them.
    Records without a known value are left untouched. Chains to the factory in place before.
    """
    _LOG_HOOK.install(redactor)
