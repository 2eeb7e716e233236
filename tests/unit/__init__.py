"""Unit tier: pure logic, nothing to start. No broker, no database server, no vLLM; the one socket used
is an in-process simulator on loopback, whose /metrics the parser is checked against. Seconds in all:
`make test-unit` (or `.venv/bin/python -m pytest tests/unit`, or `-m unit`)."""
