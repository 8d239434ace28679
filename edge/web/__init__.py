"""The web UI served by the edge at ``/``: static pages (static/) and the few JSON and event
endpoints they need beyond the public API (dashboard.py, events.py)."""
