"""The HTTP API of the crmsync service (FastAPI): ``create_app(ctx)``."""
