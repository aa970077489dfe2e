"""Ask a running churn-classifier server for one prediction, as a client would (MLflow protocol).

python ask.py http://127.0.0.1:8081
"""

from __future__ import annotations

import json
import sys
import urllib.request

ROW = {
    "tenure_months": 3,
    "monthly_charges": 80.5,
    "support_calls": 4,
    "late_payments": 1,
    "plan": "premium",
    "contract": "month-to-month",
    "payment_method": "invoice",
    "region": "north",
}

url = (sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080") + "/invocations"
body = json.dumps({"dataframe_records": [ROW]}).encode()
request = urllib.request.Request(
    url + "?probabilities=true", data=body, headers={"Content-Type": "application/json"}
)
with urllib.request.urlopen(request, timeout=10) as reply:
    print(f"POST {url} {json.dumps(ROW)}")
    print(f"→ {reply.status} {reply.read().decode()}")
