"""The operator's web console at /console: served by the admin app (never on the hot path), enabled with it."""
