"""``--demo``: a page on the listening port that shows the feed in a browser.

Off by default and, unless ``--demo-anywhere`` is given, only allowed on
loopback listeners: the page hands a working token to whoever loads it.
"""
