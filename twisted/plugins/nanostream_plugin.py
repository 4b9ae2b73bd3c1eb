"""The twistd/twist dropin: names nanostream.tap and imports nothing heavy."""

from twisted.application.service import ServiceMaker

nanostream = ServiceMaker(
    "nanostream",
    "nanostream.tap",
    "Broadcast lines from a source to authenticated WebSocket clients.",
    "nanostream",
)
