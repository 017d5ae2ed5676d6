"""`kollm serve`: an OpenAI-compatible HTTP server with continuous batching (engine.py: the model
thread; app.py: the API; cli.py: the command; testing.py: a real server process for tests)."""
