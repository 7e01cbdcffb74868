"""The black-box hostile run (issue 16): a gateway started the normal way (`vcc-pki init`,
`vcc-pki serve`) gets, per protocol (ACME, EST, SCEP, OCSP GET and POST, TSA, CRL, REST),
a stream of mutated requests grown from valid seeds (bit flips, truncations, insertions,
repeated chunks, oversized fields, random bytes, huge and empty bodies, wrong content
types, mangled paths) and the transport attacks (huge bodies, slow bodies, slowloris
headers, many connections from one address) while valid control requests keep being
answered.

    python -m conformance.hostile --requests 100000            # the full run, SQLite
    python -m conformance.hostile --requests 5000 --postgres   # a throwaway database
    python -m conformance.hostile --requests 2000 --workers 2 --protocol ocsp-post

It fails (exit 1) on any 5xx, any answer not in the protocol's error form
(conformance/hostile/forms.py), any request left without an answer, a transport attack
not refused as it should be, a control request not served, the gateway's memory growing
more than 10% after warm-up, any certificate beyond those the valid requests made or any
earlier certificate changed, a broken audit chain, or a traceback or ERROR line in the
gateway's log. It prints a table per protocol: inputs, responses by status, 5xx, form
faults, dropped connections, accepted inputs, transport attacks passed, peak memory.
The RNG is seeded (``--seed``), so a run can be repeated. `make test` runs a short one
(conformance/test_hostile.py).

Modules: mutators (the mutations), surfaces (seeds, controls), forms (error-form checks),
transport (the transport attacks), watch (memory, store, log), run (the driver, report).
"""

from __future__ import annotations

from conformance.hostile.run import main, run

__all__ = ["main", "run"]
