"""Container health: GET /healthz of local rank 0's metrics server (exit 0 healthy, 1 not).

The trainer answers 200 while its steps complete and 503 once none has for
``metrics.stall_seconds``; no answer within 5 s (a stopped process) is unhealthy too. The port is
PARTIALFC_METRICS_PORT, the variable the launchers turn into --metrics.port; the address is
127.0.0.1, which ``metrics.host`` = 0.0.0.0 (the default) or 127.0.0.1 includes.
"""

import os
import sys
import urllib.request

port = int(os.environ.get("PARTIALFC_METRICS_PORT", "9100"))
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
        sys.exit(0 if reply.status == 200 else 1)
except OSError as err:
    print(f"healthz on port {port}: {err}", file=sys.stderr)
    sys.exit(1)
