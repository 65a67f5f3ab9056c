"""eventd: event-stream automation for the Docker Cloud API."""

__version__ = "0.1.0"
