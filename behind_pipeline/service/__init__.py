"""The book's model as a web service (chapter 18): a FastAPI app, its request models and its micro-batching queue.

    make serve        # uvicorn on http://127.0.0.1:8000, OpenAPI docs at /docs

``settings`` reads the limits and the model from environment variables, ``schemas`` says what a request and a
response look like, ``batcher`` groups concurrent requests into one forward pass, and ``app`` wires them up.
"""
