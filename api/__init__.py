"""The FastAPI front: validate, write the job row, enqueue, read the database. Never imports torch."""
