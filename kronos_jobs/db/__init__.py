"""Database schema, engine/session handling and migrations."""
