"""The ``s3stream`` command line: the root group (:mod:`.app`) with every command family added to it.

Each module beside this one defines its commands on their own and imports nothing back from here;
this is the one place they are put together, so ``from s3stream.cli import main`` is the whole
command. Signals and exit codes belong to the command line only (:mod:`.app`, :mod:`.options`).
"""

from __future__ import annotations

from s3stream.cli import (
    bridge,
    bucket,
    consume,
    doctor,
    group,
    interactive,
    message,
    notify,
    ops,
    seek,
    snapshot,
    topic,
)
from s3stream.cli.app import main

for _command in (
    consume.consume, consume.run,
    interactive.dev_server, interactive.demo, interactive.tail, interactive.chat,
    message.publish, message.get, message.history,
    bucket.bucket, topic.topic, group.group_cli, doctor.doctor,
    ops.config_group, ops.dlq, notify.notifications_group, bridge.bridge, snapshot.snapshot_group,
):
    main.add_command(_command)
group.group_cli.add_command(seek.group_seek)
group.group_cli.add_command(seek.group_export)
bucket.bucket.add_command(snapshot.bucket_lifecycle)

__all__ = ["main"]
