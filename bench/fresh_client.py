"""The cache-hit fetch pair again, from a fresh Python process that never imported torch.

run.py's own process has run torch, whose large frees leave glibc's malloc thresholds raised; a fresh
process (a build tool, a game-side script) maps and faults in new pages for big received messages. Both
clients pay that, but not equally, so the ratio is reported from both kinds of process.

    python bench/fresh_client.py SERVER_ADDR RAW_ADDR N REQUEST_JSON SIZES   -> one JSON line
"""

from __future__ import annotations

import json
import sys

from common import med, r
from serving import RawClient, fetch_pairs


def main(server: str, raw: str, n: int, request: str, sizes: str) -> None:
    from troubadour.client import Client

    client, rawc = Client(server, timeout=120), RawClient(raw, [int(s) for s in sizes.split(",")])
    faults = {"ours": 0, "raw": 0}
    ours, theirs = fetch_pairs(client, rawc, json.loads(request), n, faults)   # like the main measurement
    tp = lambda recs: med([x["bytes"] / x["seconds"] / 1e6 for x in recs])   # noqa: E731
    print(json.dumps({"throughput_ratio": r(tp(ours) / tp(theirs)), "server_mb_s": r(tp(ours), 1),
                      "raw_mb_s": r(tp(theirs), 1), "not_cached": sum(1 for x in ours if not x["cached"]),
                      "page_faults_per_fetch": {k: round(v / n) for k, v in faults.items()}}))
    client.close()
    rawc.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
