"""The pacer's tunables, apart from its mechanism (as openai-python keeps ``_constants.py``).

Each figure was chosen by measurement: the simulated tables of ``bench/pacing_sim.py`` and the
HTTP pacing table of ``bench/pacing.py`` (bench/RESULTS.md, "Pacing: the constants", one entry per
constant). ``bench/pacing_sim.py`` overrides them by name to try other values.
"""

from __future__ import annotations

from .trial import TrialSettings

# A burst of N sends N - 1 over the limit; 1 drew no 429 where 2 drew one every run
# (bench/RESULTS.md, "Pacing: DEFAULT_BURST").
DEFAULT_BURST = 1
# For arrival jitter, the interval is this share longer than the limit's
# (bench/RESULTS.md, "Pacing: MARGIN_SHARE").
MARGIN_SHARE = 0.03
# Lateness a request may make up for (Gcra.take); a fixed limit's stays under the margin
# (bench/RESULTS.md, "Pacing: FIXED_CATCH_UP_S").
FIXED_CATCH_UP_S = 0.01
CATCH_UP_S = 0.02  # adaptive pacing corrects itself from 429s, so it may catch up more
# Each refused window with a fixed limit stretches the interval by this share, up to MAX_STRETCH.
STRETCH_STEP = 0.02
MAX_STRETCH = 0.10

# Adaptive mode (no limit given); the design is in docs/design/pacing.md.
# A 429 cuts the rate to this share of the allowed rate measured, not of the rate sent
# (bench/RESULTS.md, "Pacing: BETA").
BETA = 0.95
# Past the rate it was cut from, the curve is this share higher one growth time later
# (bench/RESULTS.md, "Pacing: PROBE_GROWTH").
PROBE_GROWTH = 0.1
CUBIC_K_S = 2.0  # seconds for the rate to grow back to where it was cut, at least
MAX_CUBIC_K_S = 30.0
# ... and at least this many times as long as the 429 took to come back: a rate grown past the
# limit is refused only that much later (bench/RESULTS.md, "Pacing: ANSWER_K").
ANSWER_K = 3.0
MEASURE_S = 2.0  # the send rate is measured over this many seconds
MIN_SPAN_S = 1.0  # ... but never over less: a burst let through in 50 ms is not a rate
MAX_WINDOW_S = 120.0  # the longest limiter window that is learnt
DEFAULT_WINDOW_S = 1.0  # the first guess when the server names no delay
# A hold ends this long after the time the server named, which counts from the refused
# request's arrival, not its send (bench/RESULTS.md, "Pacing: HOLD_MARGIN_S").
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
# A fixed window seen is paced for only with a count of at least this (window.py, _count); a
# check against the rate found allowed refuted true fixed windows
# (bench/RESULTS.md, "Pacing: MIN_PER_WINDOW").
MIN_PER_WINDOW = 2
MIN_RATE = 0.05  # requests a second: never slower than one every 20 s
# Trials (trial.py) of a lower rate once the limit found still draws no-delay 429s: at least a
# tenth of a span refused, the span at least 4 s and 40 sends; 0.8 of the rate let through for
# a span and a half; a limiter's if the share refused halves; none in the first 60 s, and after
# an overload verdict at most one a minute, doubling (bench/RESULTS.md, "Pacing: TRIAL_SETTINGS").
TRIAL_SETTINGS = TrialSettings(
    share=0.1, beta=0.8, min_span_s=4.0, span_sends=40, max_span_s=MAX_CUBIC_K_S, min_sends=10,
    drop=0.5, not_before_s=60.0, after_limiter_s=10.0, backoff_s=60.0,
)
