"""The S3 (and SQS) boundary: the operations s3stream uses, one retry policy, pacing, error translation.

:mod:`.store` is the one way to S3; :mod:`.lean` sends the hot requests as signed aiohttp calls
(:mod:`.sigv4`, listings parsed by :mod:`.s3xml`); :mod:`.retry` is the one retry policy; :mod:`.requestopts`
what every request carries; :mod:`.versionorder` one key's versions in S3's listing order;
:mod:`.serverclock` the server's time; :mod:`.keys` S3 URLs and one key's versions; :mod:`.sqs` the SQS
boundary.
"""
