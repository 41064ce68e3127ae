"""Servers the test suite runs on 127.0.0.1 (see ``scripted`` for the scripted OpenAI server)."""
