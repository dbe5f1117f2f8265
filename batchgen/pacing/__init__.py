"""Pacing: when the next request may leave. Pure arithmetic on an injected clock, no I/O.

    pacer.py     Pacing: GCRA for --rpm/--ipm, the adaptive rate otherwise
    rates.py     send logs, admissions, the GCRA and the CUBIC curve
    window.py    the limiter's window, as far as its 429s tell
    refusals.py  a full limiter's 429s told from an overloaded service's
    trial.py     trials of a lower rate when 429s name no delay
    gate.py      one request out until the endpoint has answered
    tuning.py    the tunables, each chosen by measurement (bench/RESULTS.md)
"""
