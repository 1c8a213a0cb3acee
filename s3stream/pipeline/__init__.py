"""The consumer's pipeline: :mod:`.consumer` runs pollers, workers and the checkpointer in one TaskGroup.

:mod:`.poller` lists a shard and hands new versions out; :mod:`.workers` fetches bodies and calls the
handlers (:mod:`.handlers`), within the byte budget of :mod:`.budget`; :mod:`.checkpointer` commits each
:mod:`.shard`'s cursor through a checkpoint store (:mod:`.checkpoint`).
"""
