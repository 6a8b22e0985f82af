"""The web service: the JSON answer API, document management and the web form (FastAPI).

- `app`: `create_app`, which wires the pieces together;
- `deps`: what a route needs (the configuration, the pipeline, the corpus writer, the rebuilds, the API key);
- `schemas`: the request and response bodies;
- `routes/`: one router per resource (answers, documents, index, pages).
"""

from qa.service.app import create_app

__all__ = ["create_app"]
