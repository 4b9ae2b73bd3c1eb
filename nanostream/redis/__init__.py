"""Talking to Redis: URLs, one kept-up connection with backoff, the publisher."""
