import logging

from services.gateway.accesslog import RedactSignatures


def test_signatures_are_cut_from_access_log_lines():
    path = "/api/bundles/j/1/artifacts?expires=1796000000&sig=AbC_d-123xyz"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "PUT", path, "1.1", 204), None)
    assert RedactSignatures().filter(record)
    line = record.getMessage()
    assert "AbC_d-123xyz" not in line
    assert "/api/bundles/j/1/artifacts?expires=1796000000&sig=[redacted] HTTP/1.1" in line
