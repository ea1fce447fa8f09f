"""Container health check: exit 0 when GET http://127.0.0.1:<port><path> answers 2xx.

    python healthcheck.py 8001            # liveness (/health), the image's HEALTHCHECK
    python healthcheck.py 8001 /ready     # models loaded (compose uses it to order start-up)

The images have no curl; /health and /ready need no API key.
"""

import sys
import urllib.request

port, path = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/health"
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:  # noqa: S310 - fixed loopback URL
        sys.exit(0 if r.status < 300 else 1)
except Exception:  # 503 (HTTPError), refused, timeout: all mean "not healthy"
    sys.exit(1)
