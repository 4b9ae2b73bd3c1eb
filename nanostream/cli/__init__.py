"""The ``nanostream`` command: ``token``, ``check`` and ``publish``."""
