"""The one library every FLTS service imports: settings, logging, Kafka, events, storage, data."""
