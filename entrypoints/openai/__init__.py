"""The OpenAI-compatible API: ``build_app(engine, model_name)`` makes the ASGI app."""
