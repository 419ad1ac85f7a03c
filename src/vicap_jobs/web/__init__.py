"""The web view and HTTP API (``vicap-jobs web``): dashboard, job galleries, models, compare, try it, JSON under /api."""
