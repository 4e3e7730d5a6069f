"""What a mount tells about itself: request statistics, Prometheus metrics, the status text."""
