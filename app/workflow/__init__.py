"""The workflow CLI for people who live in a terminal: tickets, access and recordings through the API."""
