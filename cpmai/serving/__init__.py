"""The HTTP server: protocols, validation, batching, prediction log and metrics."""
