"""Entry points: the ``actorexec`` command and the OpenAI-compatible HTTP server.

``actorexec serve`` runs ``openai.api_server`` on an ``AsyncEngine`` in one
event loop; ``actorexec generate`` streams prompts to the terminal. The
server's dependencies (Starlette, uvicorn, prometheus-client, jinja2) are the
``serve`` extra; ``generate`` needs none of them.
"""
