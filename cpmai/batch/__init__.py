"""Batch scoring: files and database tables in, files and tables out (`cpmai predict`)."""
