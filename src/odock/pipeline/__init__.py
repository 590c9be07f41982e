"""Pipeline stages (auth, access, governance gates) run in the documented order (reference §2.2)."""
