"""What connects s3stream to other systems and formats: the S3-to-SQS bridge (:mod:`.bridge`), S3 Event
Notifications (:mod:`.notifications`, :mod:`.s3events`) and routing (:mod:`.routing`), the snapshot
follower (:mod:`.snapshot`, :mod:`.snapshotparsers`, :mod:`.snapshotmetrics`) and codecs (:mod:`.codecs`).
"""
