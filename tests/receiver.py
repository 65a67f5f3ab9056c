"""The tests' webhook receiver is the demo's: one implementation (eventd/commands/demo/receiver.py)."""

from eventd.commands.demo.receiver import Received, WebhookReceiver

__all__ = ["Received", "WebhookReceiver"]
