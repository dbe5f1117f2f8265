"""The pacer's tunables, apart from its mechanism (as openai-python keeps ``_constants.py``).

Each figure was chosen by measurement: the simulated tables of ``bench/pacing_sim.py`` and the
HTTP pacing table of ``bench/pacing.py`` (bench/RESULTS.md, "Pacing"). ``bench/pacing_sim.py``
overrides them by name to try other values.
"""

from __future__ import annotations

from .trial import TrialSettings

# --burst's default. A burst of N is N - 1 requests over the limit in a short window: at 12 per
# 1-s or 2-s window, --burst 2 drew a 429 in every run and reached 0.95 of the limit, --burst 1
# none and 0.97 (late sends are made up by FIXED_CATCH_UP_S instead). ARCHITECTURE.md, "Pacing".
DEFAULT_BURST = 1
# Requests are stamped here and counted by the server on arrival, a few milliseconds later and
# not always equally later. The interval is this share longer than the limit's, which leaves 30 ms
# of slack in every second: a limiter with a window of 1 s or more never sees limit + 1 unless
# arrival jitter passes 20 ms (with 2%, one run in the full suite at load 9 drew a 429 at 10 a
# second against 10 per 1 s).
MARGIN_SHARE = 0.03
# Lateness a request may make up for (see Gcra.take). With a fixed limit it must stay under the
# margin (30 ms a second), or 13 requests could land inside one second at 12 a second. Measured
# at --rpm 720 against 12 per 1 s, on 2 cores at load 10: no catch-up reached 0.93 of the limit
# (late wake-ups are lost), 10 ms reached 0.98 with no 429, 20 ms drew a 429 (margin 2% then).
# Adaptive pacing corrects itself from 429s, so it may catch up 20 ms.
FIXED_CATCH_UP_S = 0.01
CATCH_UP_S = 0.02
# Each refused window with a fixed limit stretches the interval by this share, up to MAX_STRETCH.
STRETCH_STEP = 0.02
MAX_STRETCH = 0.10

# Adaptive mode (no limit given). Figures from bench/pacing_sim.py (ARCHITECTURE.md, "Pacing").
# A 429 cuts the rate to this share of the allowed rate measured. AWS uses 0.7, from the rate it
# sent, which overshoots the allowed one; measured here, the allowed rate is the limit itself,
# and every cut to 0.7 leaves 30% of it unused until the curve climbs back (on 12 simulated
# seeds 0.7 missed 0.9 of the limit in three of the table's eight adaptive rows; 0.9 and 0.95
# passed all, medians within a point).
BETA = 0.95
# Past the rate it was cut from, the curve is this share higher one growth time later. With
# (1 - BETA), 0.05, a cut that undershot took 6-7 s to climb back at 12 a second.
PROBE_GROWTH = 0.1
CUBIC_K_S = 2.0  # seconds for the rate to grow back to where it was cut, at least
MAX_CUBIC_K_S = 30.0
# ... and at least this many times as long as the 429 took to come back: a rate grown past the
# limit is refused only that much later, so a curve that grows back faster overshoots before it
# hears. At 2 s an answer on the 69 --wide cases (5 seeds): misses 93 -> 84, and the worst
# refused share without RetryInfo 59% -> 46%; 2x missed 92, 4x 86.
ANSWER_K = 3.0
MEASURE_S = 2.0  # the send rate is measured over this many seconds
MIN_SPAN_S = 1.0  # ... but never over less: a burst let through in 50 ms is not a rate
MAX_WINDOW_S = 120.0  # the longest limiter window that is learnt
DEFAULT_WINDOW_S = 1.0  # the first guess when the server names no delay
# A hold ends this long after the time the server named. That time is counted from the refused
# request's arrival, a few milliseconds after its send; the next request, sent at that very time,
# may arrive before the slot is free and draw a 429 that reads as a new refused window. With
# 20 ms, one run in 12 simulated at 12 per 1 s and 1 s latency fell to 0.90 of the limit.
HOLD_MARGIN_S = 0.05
# Sends are stamped here, arrivals there: a span counted from a time the server named reaches
# this much further back, so the request at its edge is in.
EDGE_S = 0.02
# A 429 with no delay named is read as a full limiter (refusals.py) after a run of
# refusals that chance makes less often than RUN_CHANCE at the share refused (MAX_RUN in a row
# always is), or with at least FULL_SHARE of the rate last found allowed let through.
RUN_CHANCE = 0.001
MAX_RUN = 8
FULL_SHARE = 0.9
# ... and only while the share refused is over NOISE_FACTOR times the share refused at a rate
# under the limit (overload 429s), measured once MIN_QUIET_SENDS requests have gone at it.
NOISE_FACTOR = 2.0
MIN_QUIET_SENDS = 10
QUIET_KEPT = 3
# A fixed window seen is paced for only with a count of at least this (window.py, _count).
# Checked against the rate found allowed instead (half of it), true fixed windows were refuted
# when a first cut overestimated that rate: 8.6% of requests refused became 21% (60 a minute,
# fixed, 20 s an answer, simulated).
MIN_PER_WINDOW = 2
MIN_RATE = 0.05  # requests a second: never slower than one every 20 s
# Trials (trial.py) of a lower rate, once the limit found still draws no-delay 429s: at least
# a tenth of a span refused, the span at least 4 s and 40 sends; 0.8 of the rate let through for
# a span and a half, judged from half a span on; a limiter's if the share refused halves.
# Simulated over 300 s without RetryInfo, at 0.5 s an answer: 12 per 5 s from 0.80 of the limit
# and 19.6% refused to 0.92 and 9.8%, 40 per 10 s from 0.73 and 12.7% to 0.93 and 5.7%; at 2 s,
# 12 per 5 s from 69% refused to 26%. None in the first 60 s and at most one a minute after an
# overload verdict, doubling: 40% random overload at 1 s an answer loses 1-2% of what the
# concurrency allows, and every row of the tables, --wide and --minute (shorter runs) is as it was.
TRIAL_SETTINGS = TrialSettings(
    share=0.1, beta=0.8, min_span_s=4.0, span_sends=40, max_span_s=MAX_CUBIC_K_S, min_sends=10,
    drop=0.5, not_before_s=60.0, after_limiter_s=10.0, backoff_s=60.0,
)
