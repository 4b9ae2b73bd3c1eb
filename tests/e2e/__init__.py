"""End-to-end tests: the real ``twistd -n nanostream`` process and real clients."""
