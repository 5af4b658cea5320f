"""Run reports: a self-contained HTML page with PNG plots (``raysv report``)."""
