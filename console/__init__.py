"""The operator console: projects, platforms, API keys, dead letters, trace lookup and the
pipeline's health in a browser (``python -m console``).

A face on the same code the CLI (``shared.ops``) and the admin API use — ``shared.registry`` for
projects, platforms and keys, the dead-letter index and ``router_worker.replay`` for dead letters,
the receipts of ``mibo-ingest trace`` for lookups, ``shared.devstack.reconcile``'s counter checks
for the pipeline — rendered server-side with Jinja2 and a little plain JavaScript served from this
package (no CDN, no build step).

``__main__`` wires; ``app`` builds the aiohttp application; ``security`` holds the pure parts of
signing in (sessions, CSRF tokens, the sign-in rate limit, the response headers); ``render`` the
templates and the formatting helpers; one module per page under ``pages/``; ``dead_letters`` and
``pipeline`` the queries those pages make.
"""
