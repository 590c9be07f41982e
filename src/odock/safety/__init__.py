"""SafetySec (reference §7): built-in detectors, per-scope policies, sessions, and the external guard."""
