"""Experiment: the tokenpak addon with pricing replaced by a constant.

``build_row`` prices every row with genai-prices (two ``calc_price`` calls) inside the
``response`` hook, which mitmproxy runs before it sends the end of the response. Comparing a run
with this script to a normal run gives what pricing costs on the latency path and in CPU.
"""

import tokenpak_mitm.telemetry as telemetry
from tokenpak_mitm.pricing import Cost

_FIXED = Cost(0.0, 0.0, "bench-fixed")


def _free_price(provider: str, model: object, usage: object, *_factors: object) -> Cost:
    return _FIXED


telemetry.price = _free_price  # type: ignore[assignment]
