"""The HTTP layer: the BentoML service, its admin routes, the request guard and BentoML patches."""
