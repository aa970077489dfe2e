"""The watcher: scheduled checks of a deployed environment, alerts with a lifecycle, and the
automatic rollback after a sustained breach (`monitoring.schedule`, `monitoring.alerts`,
`rollout.auto_rollback_on`)."""
