"""Compose healthcheck for a node: ``healthcheck.py /cluster/node-<i>/node.toml``.

Asks the node's own API for ``/v1/sys/health`` over mTLS with the node's own
certificate (every identity of the cluster may read it), so that it needs no
principal's key in the node's container. Exit 0 when healthy.
"""

import http.client
import json
import sys

from node.server.config import load_config
from node.tlsctx import client_context

cfg = load_config(sys.argv[1], create_data_dir=False)
ctx = client_context(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
conn = http.client.HTTPSConnection("localhost", cfg.api_listen[1], context=ctx, timeout=3)
try:
    conn.request("GET", "/v1/sys/health")
    resp = conn.getresponse()
    body = json.loads(resp.read(65536))
except (OSError, ValueError) as exc:
    sys.exit(f"unhealthy: {exc}")
finally:
    conn.close()
print(json.dumps(body))
sys.exit(0 if resp.status == 200 and body.get("status") == "ok" else 1)
