"""Shared fixtures. The Omnisend simulator fixtures come from the `connector.dev.testing` plugin."""
