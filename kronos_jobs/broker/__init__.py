"""The Celery app and its configuration, and the embedded filesystem broker it can run on."""
