"""Thin route modules: parse, call the job store, shape the response."""
