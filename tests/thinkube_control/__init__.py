"""thinkube-control's image discovery, as the registration tests need it (see discovery.py, upstream.py)."""
