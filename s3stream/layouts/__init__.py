"""How messages are laid out in a bucket and how a consumer knows what it has handled.

:mod:`.topics` (topic metadata, shards, names); the versions layout's :mod:`.cursor`; the log layout's
:mod:`.logcursor`, :mod:`.logpoller` and :mod:`.logwriter`; :mod:`.producer` writes either layout,
:mod:`.segments` many messages in one object.
"""
