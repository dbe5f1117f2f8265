"""The store: a paid image on disk durably before anything counts it as done.

    images.py    ImageStore and its writer thread: tmp, fsync, rename
    recovery.py  what a crash left: .tmp pairs finished, orphaned images adopted
    thumbs.py    gallery thumbnails made as images land, on a low-priority thread
    digest.py    an image's sha256, off the event loop when it is big
"""
