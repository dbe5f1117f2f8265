"""Reading a run folder back, with no manifest and no key.

    status.py    counts and spend (`status`, the head of the report and the gallery)
    report.py    latencies, throughput and errors (`report`)
    gallery.py   the static HTML gallery and its thumbnails
    estimate.py  what a run would send, cost and take (`estimate`)
"""
