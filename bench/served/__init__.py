"""Endpoint-served models: the chat-completions client, prices and serve commands."""
