"""How much more than its jobs' worst case a batch may bill: the service's duplicates.

The Batch API may return one request's result more than once, and bills every copy
(``shared/gemini-batch-wire.md``); nothing a client does after submitting changes that. So the
budget holds back, for each job of a new batch, its worst case times ``1 + margin``, where the
margin is what the folder's own results say the duplicate share could be:

- the upper end of a 95% Wilson score interval for the share of results that came twice, over
  every result this folder has collected (a small sample gives a wide margin, a large clean one
  a margin near 0: 0 duplicates in 1,000 results reserve 0.4%);
- before any result is seen, the same bound with no evidence, which is 1: every result may come
  twice. A lower first guess is what overshot: a first batch cut to fit $1.00 at 60% duplicates
  billed $1.31. The first batch is the one that can take the whole budget, so it gets no
  benefit of the doubt; from the first collected batch on the folder's own figure decides.

A share above 1 (results that came three times or more) is added as it is.
"""

from __future__ import annotations

import math

# 95%, two-sided: the margin is exceeded by chance about one batch in forty.
WILSON_Z = 1.96


def duplicate_margin(results: int, duplicates: int) -> float:
    """The extra share of a batch's worst case to reserve, from ``results`` first results
    (succeeded, not counting their copies) and ``duplicates`` extra billed copies seen."""
    if results <= 0:
        return 1.0
    twice = min(duplicates, results)
    p = twice / results
    z2 = WILSON_Z * WILSON_Z
    centre = p + z2 / (2 * results)
    spread = WILSON_Z * math.sqrt(p * (1 - p) / results + z2 / (4 * results * results))
    upper = min(1.0, (centre + spread) / (1 + z2 / results))
    return upper + max(0, duplicates - results) / results
