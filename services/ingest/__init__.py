"""IngestService: accepting notifications from backends."""
