"""Helpers for the real-browser test: start the standalone app in a subprocess and drive Debian's
chromium headless through Playwright for Python (no browser download: ``executable_path``)."""
