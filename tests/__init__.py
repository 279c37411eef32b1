"""
The trial test suite.

Hypothesis profiles: C{ci} (what C{tools/run-tests} selects through
C{HYPOTHESIS_PROFILE=ci}) is deterministic and bounded: derandomized, no
per-example deadline (the machine is shared), a fixed number of examples and
no example database.  C{dev} explores more.  Without C{HYPOTHESIS_PROFILE},
Hypothesis's defaults apply.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=500, deadline=None)

_profile = os.environ.get("HYPOTHESIS_PROFILE")
if _profile:
    settings.load_profile(_profile)
