"""``dermkit serve``: a REST API and a web page for single-image prediction, with Grad-CAM explanations.

:func:`create_app` builds the FastAPI app for any model folder (see :mod:`dermkit.serve.app`);
:mod:`dermkit.serve.batching` runs one model instance behind a bounded, batching queue;
:mod:`dermkit.serve.uploads` reads and checks uploads (size, format sniffing, bombs, aspect).
"""

from dermkit.serve.app import NOTICE, create_app, model_info
from dermkit.serve.uploads import ServeLimits

__all__ = ["create_app", "model_info", "ServeLimits", "NOTICE"]
