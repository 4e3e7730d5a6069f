"""Change events: from the store's subscription (or the poller) to kernel invalidations."""
