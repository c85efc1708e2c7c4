"""tether's HTTP edge: the OpenAI-compatible gateway endpoint (and, later, the runs API and console)."""
