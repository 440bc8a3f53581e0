"""Worker backends: where chunks of inputs run (threads today; one module each)."""
