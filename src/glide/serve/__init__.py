"""``glide serve``: a JSON HTTP API (and a web UI) over the pipelines, for one machine's models.

``limits``: the per-request bounds a server enforces; ``schemas``: the request and response
bodies; ``security``: body caps, image decoding caps, API keys, bind checks; ``models``: the
pipelines loaded once at start-up; ``worker``: the bounded queue and the one sampling thread
that batches compatible requests; ``api``: the FastAPI app; ``ui``: the Gradio UI on it.

Needs the ``serve`` extra (``pip install 'glide[serve]'``): nothing here is imported by
``glide --help``.
"""
