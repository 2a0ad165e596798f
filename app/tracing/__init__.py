"""OpenTelemetry tracing of relay sessions, API requests and scheduled jobs; off unless an endpoint is set.

Spans say what happened and how long it took (routes, status and close codes, counts, request IDs), never
what was said: no frame content, query strings, headers or bodies.
"""
