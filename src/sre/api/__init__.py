"""The HTTP adapter: a FastAPI app over `Runtime`, served by uvicorn (`sre serve`)."""

from sre.api.app import create_app

__all__ = ["create_app"]
