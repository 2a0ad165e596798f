"""The HTTP server in front of the app: uvicorn's httptools protocol with head and body limits, timeouts and a
bound on connections per client address (`VOICELOG_SERVER__*`)."""
