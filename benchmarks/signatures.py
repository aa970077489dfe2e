"""Signed ledger events: how long `cpmai ledger verify` takes to check 1,000 signatures.

    python benchmarks/signatures.py [--events 1000]

Makes an ed25519 key and an allowed-signers file, appends N signed `approve` events through
cpmai's own writer (ssh-keygen -Y sign each), then times the signature check of `ledger
verify` (ssh-keygen -Y verify each, in parallel) and the chain check alone. Target (issue 22):
1,000 signed events verify in 5 s or less. Exits 4 when missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    from cpmai import integrity
    from cpmai.ledger import Ledger

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        key = home / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        pub = (home / "key.pub").read_text().split()
        (home / "allowed_signers").write_text(f"bench@example.com {pub[0]} {pub[1]}\n")
        ledger = Ledger(home)
        started = time.perf_counter()
        for i in range(args.events):
            ledger.append("approve", actor="bench@example.com", name="m", version="1.0.0",
                          env="production", details={"note": str(i)}, sign_with=key)  # fmt: skip
        signing = time.perf_counter() - started
        started = time.perf_counter()
        chain = ledger.verify()
        chain_s = time.perf_counter() - started
        started = time.perf_counter()
        events = ledger.read().events
        problems = integrity._signature_problems(home, ledger, events)
        verify_s = time.perf_counter() - started
    ok = chain.ok and not problems and verify_s <= 5.0
    print(
        f"{args.events} signed events: signing {signing:.1f} s ({signing / args.events * 1000:.1f} "
        f"ms each); chain check {chain_s:.3f} s; signature check {verify_s:.2f} s "
        f"(target <= 5 s: {'met' if verify_s <= 5.0 else 'MISSED'}); problems: {len(problems)}"
    )
    return 0 if ok else 4


if __name__ == "__main__":
    sys.exit(main())
