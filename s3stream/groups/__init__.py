"""Consumer groups: members sharing a topic's shards by leases stored in the bucket.

:mod:`.lease` is the pure part (lease views, the balanced plan, tenures); :mod:`.membership` the I/O
(member records, renewals, takes and releases); :mod:`.view` reads a group back; :mod:`.seekpos` and
:mod:`.seek` move a group's position.
"""
