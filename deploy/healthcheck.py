"""Docker HEALTHCHECK: exit 0 when the service's /readyz answers 200 (slim images have no curl)."""

import os
import sys
import urllib.request

PORT = os.environ.get("BENTOML_PORT", "3000")

try:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/readyz", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # connection refused while starting, 503 while loading, ...
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
