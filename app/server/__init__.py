"""The HTTP server in front of the app: uvicorn's httptools protocol with head limits, timeouts and a bound on
connections per client address (`VOICELOG_SERVER__*`)."""
