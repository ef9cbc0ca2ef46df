"""Reports over run folders: tables and figures (``tables``, ``analysis``, ``baselines``, ``deployment``), the
shared drawing helpers (``plotting``), the report command (``cli``) and the health check (``health``)."""
