"""The API wire: one JobSpec in, one image (or one batchgen error) out.

    client.py     GeminiClient: the request built and posted, the answer read
    session.py    SessionOwner: the aiohttp session and the key both API clients share
    translate.py  the error table: HTTP answers and transport failures as batchgen errors
    response.py   reading a generateContent answer: pure functions, no I/O
    http_body.py  bodies read with a ceiling counted after decompression
    retrying.py   the retry constants and the one function that decides whether to try again

aiohttp, JSON and OS errors are translated into batchgen.errors here and nowhere above.
Nothing is imported eagerly: `status` and `--help` never load aiohttp.
"""
