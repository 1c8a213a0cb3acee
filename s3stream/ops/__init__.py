"""Operations on buckets, topics and groups that commands run once: :mod:`.admin` (bucket and topic
set-up and removal), :mod:`.describe` (what a topic holds and each group's lag), :mod:`.doctor` and
:mod:`.doctorprobes` (what a store guarantees).
"""
