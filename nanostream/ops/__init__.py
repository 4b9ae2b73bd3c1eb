"""What operators see: metrics, health pages, access and JSON logs, memory."""
