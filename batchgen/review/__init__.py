"""``batchgen review``: a run folder as a local web page to look through and give verdicts.

    index.py    the folder in memory (jobs, ledger, reviews), read again only where it grew
    queries.py  filters, facets, the two-field grid, one job in full: what the page asks
    server.py   the aiohttp app on loopback: the token, the API, thumbnails, files inside DIR
    assets/     the page itself (index.html, app.js, app.css): no CDN, works offline
"""
