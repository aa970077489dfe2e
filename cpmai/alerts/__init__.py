"""Alerts that reach people: the message every channel sends, the channels, and the outbox
that retries deliveries with backoff."""
