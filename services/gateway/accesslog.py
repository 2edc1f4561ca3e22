"""The access log without credentials: a signed URL's signature is as good as the key it stands for until it
expires, so it is cut from every request line before the line is written."""

from __future__ import annotations

import logging
import re

_SIGNATURE = re.compile(r"(?<=[?&]sig=)[^&\s\"]+")


def redact(text: str) -> str:
    return _SIGNATURE.sub("[redacted]", text)


class RedactSignatures(logging.Filter):
    """For ``uvicorn.access``: its record's arguments hold the request path with its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        record.msg = redact(record.msg) if isinstance(record.msg, str) else record.msg
        return True
