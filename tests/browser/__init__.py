"""Browser tier: the web console (/console/) driven in headless Chromium — Debian's `chromium` at
/usr/bin/chromium (`scripts/ensure-chromium.sh` installs it), through Playwright's Python package
pointed at that executable (Playwright's own browser download is never used) — against a whole stack
with the vLLM simulator and the real RabbitMQ. Screenshots of every page go to tests/browser/artifacts/
(not committed). Run: `.venv/bin/python -m pytest tests/browser` (or `-m browser`); about a minute."""
