"""WSGI entry point: `config.wsgi:application`.

Django's WSGI handler with settings.MIDDLEWARE; with the fast path `django_lean_handler` (fastpaths/) the two
event endpoints are served by a handler with a short middleware chain instead, and with `direct_single_event` a
plain single-event POST is answered before any handler (see those modules). POSTs to the event endpoints pass
ingestion.shedding's gate first (INGEST_WEB_ACTIVE_REQUESTS).
"""

import os
from typing import Any

from django.core.wsgi import get_wsgi_application

from config.heap import settle_after_startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def _application() -> Any:
    full = get_wsgi_application()  # sets Django up
    from django.urls import reverse

    import fastpaths
    from fastpaths import direct_single_event, django_lean_handler
    from ingestion import shedding, views
    from ingestion.middleware import ingest_paths

    fastpaths.log_once("web")
    event_path = reverse("ingest-event")
    app = django_lean_handler.application(full, ingest_paths())
    app = direct_single_event.application(app, path=event_path, answer=views.answer_event_directly)
    return shedding.gated(app, event_path=event_path, batch_path=reverse("ingest-batch"))


application = _application()
# config.heap: the start-up heap is done. The default young threshold is kept here: a request's garbage cycles
# hold its parsed body, and waiting for 20,000 allocations let them pile up (a higher peak RSS under batches).
settle_after_startup(young_threshold=None)
